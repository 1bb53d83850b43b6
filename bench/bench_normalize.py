"""Benchmark: core.normalize.normalize_batch against the ffmpeg-normalize CLI.

Generates a batch of files of varied content and loudness, normalizes the whole batch with both
tools to the same EBU R128 targets (I=-23 LUFS, TP=-2 dBTP, LRA=7 LU, 48 kHz stereo Ogg Opus at
128 kb/s), meters every output with ffmpeg's ebur128 filter and prints markdown tables.

CPU time is this process's own CPU time (normalize_batch's worker threads included) plus that
of all waited-for child processes (``RUSAGE_CHILDREN`` includes grandchildren, i.e. the ffmpeg
processes ffmpeg-normalize runs). The machine this runs on is usually shared and noisy: run it
a few times before drawing conclusions.

    uv run python bench/bench_normalize.py --files 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core.normalize  # noqa: E402
from core.ffmpeg import ffmpeg_binary  # noqa: E402
from core.normalize import (  # noqa: E402
    LoudnessTarget,
    NormalizeOptions,
    measure_loudness,
    normalize_batch,
)
from tests.core import audiogen  # noqa: E402

T = TypeVar("T")
TARGET = LoudnessTarget(integrated=-23.0, true_peak=-2.0, lra=7.0)
KINDS = ("speech", "music", "quiet-speech", "loud-music", "speech-stereo", "music-96k", "peaky")


@dataclass
class Cost:
    wall: float
    cpu: float


def _cpu_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], T]) -> tuple[Cost, T]:
    cpu0, wall0 = _cpu_now(), time.perf_counter()
    value = fn()
    return Cost(time.perf_counter() - wall0, _cpu_now() - cpu0), value


def generate(folder: Path, count: int, seconds: float, kinds: list[str]) -> list[Path]:
    """``count`` files cycling through content ``kinds``, each at a different level."""
    files = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        level = -4.0 * (index % 5)  # 0, -4, ..., -16 dB on top of the kind's own level
        path = folder / f"{index:03d}-{kind}.mp3"
        if kind == "speech":
            audiogen.speech(path, seconds=seconds, gain_db=level)
        elif kind == "speech-stereo":
            audiogen.speech(path, seconds=seconds, channels=2, gain_db=level)
        elif kind == "quiet-speech":
            audiogen.speech(path, seconds=seconds, gain_db=-26.0 + level / 2)
        elif kind == "music":
            wav = audiogen.loud_music(folder / "tmp.wav", seconds=seconds)
            audiogen.encode(wav, path, extra=["-af", f"volume={-10 + level}dB"])
        elif kind == "music-96k":
            flac = audiogen.loud_music(folder / "tmp.flac", seconds=seconds, rate=96000)
            path = audiogen.encode(
                flac, path.with_suffix(".flac"), extra=["-af", f"volume={level}dB"]
            )
        elif kind == "loud-music":
            audiogen.loud_music(path, seconds=seconds)
        else:
            audiogen.peaky(path.with_suffix(".wav"), seconds=seconds)
            audiogen.encode(path.with_suffix(".wav"), path)
            path.with_suffix(".wav").unlink()
        files.append(path)
    for leftover in ("tmp.wav", "tmp.flac"):
        (folder / leftover).unlink(missing_ok=True)
    return files


def run_ours(
    files: list[Path], out: Path, concurrency: int | None, options: NormalizeOptions
) -> tuple[list[Path], dict[str, int]]:
    shutil.rmtree(out, ignore_errors=True)
    pairs = [(f, out / f"{f.stem}.ogg") for f in files]
    results = asyncio.run(normalize_batch(pairs, options, concurrency=concurrency))
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"normalize_batch failed on {len(failed)} files: {failed[0].error}")
    methods: dict[str, int] = {}
    for r in results:
        assert r.result is not None
        methods[r.result.method] = methods.get(r.result.method, 0) + 1
    return [dst for _, dst in pairs], methods


def run_ffmpeg_normalize(files: list[Path], out: Path) -> list[Path]:
    exe = shutil.which("ffmpeg-normalize") or str(Path(sys.executable).parent / "ffmpeg-normalize")
    cmd = [
        exe,
        *map(str, files),
        "-nt",
        "ebu",
        "-t",
        str(TARGET.integrated),
        "-tp",
        str(TARGET.true_peak),
        "-lrt",
        str(TARGET.lra),
        "-c:a",
        "libopus",
        "-b:a",
        "128k",
        "-ar",
        "48000",
        "-ac",
        "2",
        "-ext",
        "ogg",
        "-of",
        str(out),
        "-f",
        "-q",
    ]
    env = {**os.environ, "FFMPEG_PATH": ffmpeg_binary()}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg-normalize failed:\n{proc.stderr}")
    return [out / f"{f.stem}.ogg" for f in files]


@dataclass
class Accuracy:
    max_abs_error: float
    mean_abs_error: float
    within_1lu: int
    max_true_peak: float
    tp_ok: int
    count: int


def accuracy(outputs: list[Path]) -> Accuracy:
    readings = [audiogen.meter(p) for p in outputs]
    errors = [abs(r.integrated - TARGET.integrated) for r in readings]
    peaks = [r.true_peak for r in readings]
    return Accuracy(
        max_abs_error=max(errors),
        mean_abs_error=statistics.fmean(errors),
        within_1lu=sum(e <= 1.0 for e in errors),
        max_true_peak=max(peaks),
        tp_ok=sum(p <= TARGET.true_peak + 0.5 for p in peaks),
        count=len(readings),
    )


def measure_all(files: list[Path], method: str, concurrency: int) -> list[float]:
    async def go() -> list[float]:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> float:
            async with gate:
                m = await measure_loudness(path, TARGET, method=method)  # type: ignore[arg-type]
                return m.input_i

        return list(await asyncio.gather(*(one(f) for f in files)))

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=None, help="default: CPU count")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"content to cycle through (default: all of {KINDS})",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--skip-measure", action="store_true", help="skip the meter comparison")
    parser.add_argument(
        "--quick", action="store_true", help="only the default normalize_batch run and the CLI"
    )
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    concurrency = args.concurrency or cpus
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-normalize-"))
    inputs, ours_out, theirs_out = work / "in", work / "ours", work / "ffmpeg-normalize"
    for folder in (inputs, ours_out, theirs_out):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    print(f"generating {args.files} x {args.seconds:g} s files in {inputs} ...", file=sys.stderr)
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    files = generate(inputs, args.files, args.seconds, kinds)
    in_levels = [audiogen.meter(f).integrated for f in files]
    total_audio = args.files * args.seconds

    runs: list[tuple[str, Cost, Accuracy, str]] = []
    default = NormalizeOptions(target=TARGET)
    # (label, concurrency, options, core.normalize attributes to override for the run)
    variants: list[tuple[str, int, NormalizeOptions, dict[str, object]]] = [
        ("`normalize_batch`", concurrency, default, {})
    ]
    if not args.quick:
        variants += [
            (
                "`normalize_batch`, true peak always measured",
                concurrency,
                NormalizeOptions(target=TARGET, screen_true_peak=False),
                {},
            ),
            ("`normalize_batch`, concurrency 1", 1, default, {}),
            # What two of the choices buy (ablations, not supported settings):
            (
                "`normalize_batch`, Opus complexity 10 (ffmpeg's default)",
                concurrency,
                default,
                {"OPUS_COMPRESSION_LEVEL": 10},
            ),
            (
                "`normalize_batch`, workers not pinned to CPUs",
                concurrency,
                default,
                {"_worker_cpus": lambda workers: [None] * workers},
            ),
        ]
    for label, workers, options, overrides in variants:
        print(f"{label} ...", file=sys.stderr)
        saved = {name: getattr(core.normalize, name) for name in overrides}
        for name, value in overrides.items():
            setattr(core.normalize, name, value)
        try:
            cost, (outputs, methods) = timed(
                functools.partial(run_ours, files, ours_out, workers, options)
            )
        finally:
            for name, value in saved.items():
                setattr(core.normalize, name, value)
        note = ", ".join(f"{n} {m}" for m, n in sorted(methods.items()))
        runs.append((label, cost, accuracy(outputs), note))
    print("ffmpeg-normalize ...", file=sys.stderr)
    theirs_cost, theirs_files = timed(lambda: run_ffmpeg_normalize(files, theirs_out))
    runs.append(
        ("`ffmpeg-normalize` (two-pass, sequential)", theirs_cost, accuracy(theirs_files), "")
    )

    print()
    print(
        f"{args.files} files x {args.seconds:g} s of {', '.join(kinds)} "
        f"({total_audio:g} s of audio; input loudness "
        f"{min(in_levels):.1f} .. {max(in_levels):.1f} LUFS), {cpus} CPUs, "
        f"normalize_batch concurrency {concurrency}; ffmpeg {ffmpeg_binary()}"
    )
    print()
    print(
        "| run | wall s | CPU s | CPU ms per audio s | less wall | less CPU "
        "| max abs(I+23) LU | mean abs(I+23) LU | within +-1 LU | max TP dBTP | TP <= -1.5 "
        "| methods |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, cost, acc, note in runs:
        print(
            f"| {label} | {cost.wall:.2f} | {cost.cpu:.2f} | {1000 * cost.cpu / total_audio:.1f} "
            f"| {theirs_cost.wall / cost.wall:.1f}x | {theirs_cost.cpu / cost.cpu:.1f}x "
            f"| {acc.max_abs_error:.1f} | {acc.mean_abs_error:.2f} | {acc.within_1lu}/{acc.count} "
            f"| {acc.max_true_peak:.1f} | {acc.tp_ok}/{acc.count} | {note} |"
        )

    if args.skip_measure:
        return
    print()
    print("Measurement pass only (same files, same concurrency):")
    print()
    print("| meter | wall s | CPU s | mean abs(I - ebur128 I) LU | max |")
    print("|---|---:|---:|---:|---:|")
    reference: list[float] = []
    for method in ("ebur128", "loudnorm"):
        cost, levels = timed(functools.partial(measure_all, files, method, concurrency))
        if not reference:
            reference = levels
        diffs = [abs(a - b) for a, b in zip(levels, reference, strict=True)]
        print(
            f"| `{method}` | {cost.wall:.2f} | {cost.cpu:.2f} | {statistics.fmean(diffs):.2f} "
            f"| {max(diffs):.2f} |"
        )


if __name__ == "__main__":
    main()
