"""Scanning a library of 5,000 files: the first scan (decode, hash, insert) and a rescan of the
unchanged library (which must only compare sizes and modification times).

    uv run python -m bench.bench_scan --files 5000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_settings  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.services.container import Services  # noqa: E402

RATE = 8000


def write_wav(path: Path, freq: float, seconds: float = 0.1) -> None:
    """A short, distinct 16-bit mono tone (no ffmpeg needed to make thousands of them)."""
    frames = int(RATE * seconds)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * n / RATE)))
        for n in range(frames)
    )
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(samples),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        RATE,
        RATE * 2,
        2,
        16,
        b"data",
        len(samples),
    )
    path.write_bytes(header + samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rescans", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    try:
        settings = load_settings(
            data_dir=workdir / "data", sounds_dir=workdir / "sounds", _env_file=None
        )
        await upgrade(settings.database_url)
        async with Services.from_settings(settings) as services:
            folder = services.storage.originals / "soundboard"
            for n in range(args.files):
                sub = folder / f"batch{n // 500:02d}"
                sub.mkdir(exist_ok=True)
                write_wav(sub / f"tone{n:05d}.wav", 200 + n * 0.37)
            started = time.perf_counter()
            first = await services.scanner.scan(normalize=False)
            first_seconds = time.perf_counter() - started
            assert len(first.added) == args.files, (len(first.added), first.skipped[:3])
            rescans = []
            for _ in range(args.rescans):
                started = time.perf_counter()
                report = await services.scanner.scan(normalize=False)
                rescans.append(time.perf_counter() - started)
                assert report.unchanged == args.files and not report.added
        best, worst = min(rescans), max(rescans)
        print(f"# Library scan ({args.files} files, SQLite, normalization off)")
        print()
        print("| scan | seconds | share of the first scan |")
        print("|---|---|---|")
        print(f"| first (decode, hash, insert) | {first_seconds:.2f} | 100% |")
        print(
            f"| rescan, unchanged (best of {args.rescans}) | {best:.3f} "
            f"| {best / first_seconds:.2%} |"
        )
        print(
            f"| rescan, unchanged (worst of {args.rescans}) | {worst:.3f} "
            f"| {worst / first_seconds:.2%} |"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
