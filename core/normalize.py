"""EBU R128 loudness normalization of sound files to Ogg Opus (or mp3).

Strategy (two-pass, the default):

1. **Measure** integrated loudness and true peak with ffmpeg's ``ebur128=peak=true`` filter.
   That is several times cheaper than a ``loudnorm`` analysis pass (loudnorm runs its whole
   analysis at 192 kHz) and agrees with it to a few tenths of a LU. The same ffmpeg run decodes
   the whole file, so it doubles as validation (:class:`~core.audio.InvalidAudioError`).
2. **Apply**, by what the measurement allows:

   * ``"gain"``: if a plain linear gain to the target keeps the true peak at or below the
     target (minus a small allowance for the lossy codec's overshoot), apply exactly that gain
     with ``volume`` while resampling and encoding. Cheap and exact.
   * ``"limit"``: otherwise (a peak-to-loudness ratio above about 20.5 dB: clicks, drums,
     gunshots) apply the gain followed by a look-ahead limiter running at 4x the output rate
     (a true-peak limiter), meter the limited signal in the same run, and correct the gain until
     the integrated loudness lands within :data:`LIMIT_TOLERANCE_LU` of the target. ``loudnorm``
     would fall back to its dynamic mode here, which misses the integrated target by more than
     1 LU on such material and leaves clips shorter than its 3 s window untouched.
   * ``"silent"``: digital silence (or everything below the -70 LUFS absolute gate) is only
     transcoded and flagged.

One-pass mode (``two_pass=False``) is a single ``loudnorm`` pass in its dynamic mode
(``"loudnorm-1pass"``); it is slower than the two-pass path and less accurate, and exists for
parity with the classic recipe.

Every output is 48 kHz stereo Ogg Opus in 20 ms frames (what Discord expects, so the bot can
send the file's packets as they are), written to a temporary file next to the destination and
moved into place atomically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.audio import (
    AudioInfo,
    InvalidAudioError,
    check_audio_file,
    decode_input_args,
    ffmpeg_input,
    get_audio_duration,
    hash_open_file,
    interpret_decode,
    probe_audio_async,
)
from core.ffmpeg import FFmpegError, FFmpegResult, base_args, run_ffmpeg

__all__ = [
    "LIMIT_TOLERANCE_LU",
    "TRUE_PEAK_CODEC_MARGIN_DB",
    "BatchItem",
    "LoudnessTarget",
    "MeasureMethod",
    "Measurement",
    "Method",
    "NormalizeOptions",
    "NormalizeResult",
    "OutputFormat",
    "ProgressCallback",
    "measure_loudness",
    "normalize_batch",
    "normalize_file",
]

logger = logging.getLogger(__name__)

Method = Literal["gain", "limit", "loudnorm-1pass", "silent"]
OutputFormat = Literal["ogg", "mp3"]
MeasureMethod = Literal["ebur128", "loudnorm"]

# Lossy encoders overshoot the true peak of what they are fed by a few tenths of a dB; aim this
# much under the target so the *decoded* output stays at or below it.
TRUE_PEAK_CODEC_MARGIN_DB = 0.5
# The limiter path re-runs until the integrated loudness is this close to the target.
LIMIT_TOLERANCE_LU = 0.5
_LIMIT_MAX_RUNS = 5  # one metering run, then up to four encodes
_LIMIT_MAX_EXTRA_GAIN_DB = 24.0
# Integrated loudness at or below the absolute gate means "nothing to measure".
_ABSOLUTE_GATE_LUFS = -70.0
# ebur128 integrates 400 ms blocks; shorter clips are padded with silence up to this length for
# measuring so they still get a (slightly conservative) loudness instead of none.
_MIN_MEASURE_SECONDS = 0.5
_OPUS_SAMPLE_RATES = (48000, 24000, 16000, 12000, 8000)
_BITRATE_RE = re.compile(r"^\d+(?:\.\d+)?[kKM]?$")

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class LoudnessTarget:
    """EBU R128 targets: integrated loudness (LUFS), maximum true peak (dBTP), loudness range."""

    integrated: float = -23.0
    true_peak: float = -2.0
    lra: float = 7.0

    def __post_init__(self) -> None:
        if not -70.0 <= self.integrated <= -5.0:
            raise ValueError(f"integrated target {self.integrated} LUFS outside -70..-5")
        if not -9.0 <= self.true_peak <= 0.0:
            raise ValueError(f"true peak target {self.true_peak} dBTP outside -9..0")
        if not 1.0 <= self.lra <= 50.0:
            raise ValueError(f"loudness range target {self.lra} LU outside 1..50")


@dataclass
class NormalizeOptions:
    target: LoudnessTarget = field(default_factory=LoudnessTarget)
    output_format: OutputFormat = "ogg"  # Ogg Opus; or "mp3"
    bitrate: str = "128k"
    two_pass: bool = True
    sample_rate: int = 48000
    channels: int = 2
    timeout: float = DEFAULT_TIMEOUT  # seconds, per ffmpeg run

    def __post_init__(self) -> None:
        if self.output_format not in ("ogg", "mp3"):
            raise ValueError(f"unsupported output format {self.output_format!r}")
        if self.channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if self.output_format == "ogg" and self.sample_rate not in _OPUS_SAMPLE_RATES:
            raise ValueError(f"Opus cannot encode at {self.sample_rate} Hz")
        if not 8000 <= self.sample_rate <= 192000:
            raise ValueError(f"sample rate {self.sample_rate} out of range")
        if not _BITRATE_RE.match(self.bitrate):
            raise ValueError(f"bad bitrate {self.bitrate!r} (expected e.g. '128k')")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


@dataclass(frozen=True)
class Measurement:
    """Loudness of an input (after the remix to the output's channel count).

    ``target_offset`` is the gain in dB that brings ``input_i`` to the target (the
    ``loudnorm`` method reports loudnorm's own value instead). Silence measures as
    -inf/-70 LUFS: check :attr:`usable`.
    """

    input_i: float
    input_tp: float
    input_lra: float
    input_thresh: float
    target_offset: float

    @property
    def usable(self) -> bool:
        return (
            math.isfinite(self.input_i)
            and math.isfinite(self.input_tp)
            and self.input_i > _ABSOLUTE_GATE_LUFS + 0.05
        )


@dataclass(frozen=True)
class NormalizeResult:
    src: Path
    dst: Path
    duration_ms: int
    size: int
    sha256: str
    method: Method
    silent: bool
    measurement: Measurement | None  # the input's loudness
    gain_db: float | None  # the linear gain applied ("gain"/"limit"), 0 for "silent"
    input: AudioInfo | None = None


@dataclass(frozen=True)
class BatchItem:
    """One entry of :func:`normalize_batch`'s answer: a result or an error reason."""

    src: Path
    dst: Path
    result: NormalizeResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


ProgressCallback = Callable[[int, int, BatchItem], object]


# --------------------------------------------------------------------------------------------
# Parsing ffmpeg's loudness reports.

_NUMBER = r"([-+]?(?:inf|nan|\d+(?:\.\d+)?))"


def _number_after(label: str, text: str) -> float:
    found = re.search(rf"^\s*{label}:\s+{_NUMBER}", text, re.MULTILINE | re.IGNORECASE)
    if found is None:
        raise FFmpegError(f"ebur128 summary has no {label!r} value", stderr=text)
    return float(found.group(1))


def _parse_ebur128(stderr: str, target: LoudnessTarget) -> Measurement:
    """Parse the ``Summary:`` block the ebur128 filter logs at the end of a run."""
    _, found, summary = stderr.rpartition("Summary:")
    if not found:
        raise FFmpegError("ebur128 printed no summary", stderr=stderr)
    integrated, _, rest = summary.partition("Loudness range:")
    loudness_range, _, peak = rest.partition("True peak:")
    input_i = _number_after("I", integrated)
    return Measurement(
        input_i=input_i,
        input_tp=_number_after("Peak", peak),
        input_lra=_number_after("LRA", loudness_range),
        input_thresh=_number_after("Threshold", integrated),
        target_offset=target.integrated - input_i if math.isfinite(input_i) else 0.0,
    )


def _parse_loudnorm(stderr: str) -> Measurement:
    """Parse the JSON object loudnorm prints with ``print_format=json``."""
    start = stderr.rfind("Parsed_loudnorm")
    opening = stderr.find("{", start)
    closing = stderr.find("}", opening)
    if start < 0 or opening < 0 or closing < 0:
        raise FFmpegError("loudnorm printed no statistics", stderr=stderr)
    try:
        stats = json.loads(stderr[opening : closing + 1])
        return Measurement(
            input_i=float(stats["input_i"]),
            input_tp=float(stats["input_tp"]),
            input_lra=float(stats["input_lra"]),
            input_thresh=float(stats["input_thresh"]),
            target_offset=float(stats["target_offset"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise FFmpegError(f"unreadable loudnorm statistics: {exc}", stderr=stderr) from exc


# --------------------------------------------------------------------------------------------
# ffmpeg command lines.


def _layout(options: NormalizeOptions) -> str:
    return "mono" if options.channels == 1 else "stereo"


def _remix(options: NormalizeOptions) -> str:
    # Measure and process after the same remix the output gets: a mono file played as
    # stereo has a 3 dB lower true peak per channel than the mono original, for example.
    return f"aformat=sample_fmts=flt|fltp:channel_layouts={_layout(options)}"


def _loudnorm(target: LoudnessTarget, true_peak: float) -> str:
    return (
        f"loudnorm=I={target.integrated:.2f}:TP={true_peak:.2f}:LRA={target.lra:.2f}"
        ":print_format=json"
    )


def _effective_true_peak(target: LoudnessTarget) -> float:
    return max(-9.0, target.true_peak - TRUE_PEAK_CODEC_MARGIN_DB)


def _measure_args(path: Path, chain: str) -> list[str]:
    return [
        *base_args("level+verbose"),
        "-threads",
        "1",
        "-filter_threads",
        "1",
        *decode_input_args(path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-af",
        chain,
        "-f",
        "null",
        "-",
    ]


def _codec_args(options: NormalizeOptions) -> list[str]:
    if options.output_format == "mp3":
        return ["-c:a", "libmp3lame", "-b:a", options.bitrate, "-f", "mp3"]
    return [
        "-c:a",
        "libopus",
        "-b:a",
        options.bitrate,
        "-vbr",
        "on",
        "-application",
        "audio",
        "-frame_duration",
        "20",
        "-f",
        "ogg",
    ]


def _encode_args(
    src: Path,
    tmp: Path,
    chain: str,
    options: NormalizeOptions,
    *,
    meter: bool = False,
    loglevel: str = "level+error",
) -> list[str]:
    """Decode ``src``, run ``chain``, encode to ``tmp``; with ``meter`` also run ebur128 on the
    filtered signal (before the encoder) and log its summary."""
    graph = f"[0:a:0]{chain}"
    if meter:
        graph += ",asplit=2[out][meter];[meter]ebur128=peak=true:framelog=quiet,anullsink"
    else:
        graph += "[out]"
    return [
        *base_args("level+info" if meter else loglevel),
        "-threads",
        "1",
        "-filter_complex_threads",
        "1",
        *decode_input_args(src),
        "-filter_complex",
        graph,
        "-map",
        "[out]",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-ar",
        str(options.sample_rate),
        "-ac",
        str(options.channels),
        *_codec_args(options),
        "-y",
        ffmpeg_input(tmp),
    ]


def _check_encode(result: FFmpegResult, what: str) -> None:
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise FFmpegError(
            f"ffmpeg failed while {what} (exit {result.returncode}): {tail}",
            returncode=result.returncode,
            stderr=result.stderr,
        )


# --------------------------------------------------------------------------------------------
# Measuring.


async def _measure(
    path: Path, target: LoudnessTarget, options: NormalizeOptions, method: MeasureMethod
) -> tuple[Measurement, AudioInfo]:
    """Decode all of ``path`` once: validate it and measure its loudness."""
    pad = f"apad=whole_dur={_MIN_MEASURE_SECONDS}"
    if method == "ebur128":
        meter = "ebur128=peak=true:framelog=quiet"
    else:
        meter = _loudnorm(target, target.true_peak)
    chain = f"{_remix(options)},{pad},{meter}"
    await asyncio.to_thread(check_audio_file, path)
    result = await run_ffmpeg(_measure_args(path, chain), timeout=options.timeout)
    info = interpret_decode(result)
    if method == "ebur128":
        measurement = _parse_ebur128(result.stderr, target)
    else:
        measurement = _parse_loudnorm(result.stderr)
    return measurement, info


async def measure_loudness(
    path: str | os.PathLike[str],
    target: LoudnessTarget | None = None,
    *,
    method: MeasureMethod = "ebur128",
    channels: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
) -> Measurement:
    """Integrated loudness, true peak, LRA and gating threshold of ``path``.

    ``method="ebur128"`` (default) uses the ebur128 filter; ``"loudnorm"`` a loudnorm analysis
    pass (the classic first pass, several times slower). The file is measured after a remix to
    ``channels``, as it will be played. Raises :class:`InvalidAudioError` for files that are not
    valid audio. Silence gives a measurement whose ``usable`` is False.
    """
    target = target or LoudnessTarget()
    options = NormalizeOptions(target=target, channels=channels, timeout=timeout)
    measurement, _ = await _measure(Path(path), target, options, method)
    return measurement


# --------------------------------------------------------------------------------------------
# Normalizing.


@dataclass
class _Outcome:
    method: Method
    silent: bool
    measurement: Measurement | None
    gain_db: float | None
    info: AudioInfo | None


def _temp_path(dst: Path, options: NormalizeOptions) -> Path:
    suffix = ".mp3" if options.output_format == "mp3" else ".ogg"
    return dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part{suffix}")


def _resample(options: NormalizeOptions) -> str:
    return f"aresample={options.sample_rate}"


async def _encode(src: Path, tmp: Path, chain: str, options: NormalizeOptions) -> None:
    result = await run_ffmpeg(_encode_args(src, tmp, chain, options), timeout=options.timeout)
    _check_encode(result, "encoding")


async def _apply_limited(
    src: Path, tmp: Path, measurement: Measurement, options: NormalizeOptions
) -> float:
    """Gain + 4x-oversampled look-ahead limiter, iterated until the loudness is on target.

    Returns the input gain finally used. The first run only meters (no encode); each later run
    encodes and meters the same signal, so the last run's output is the one kept.
    """
    target = options.target
    ceiling = 10 ** (_effective_true_peak(target) / 20)
    oversampled = options.sample_rate * 4
    first_gain = target.integrated - measurement.input_i
    gain = first_gain
    encoded_gain: float | None = None
    history: list[tuple[float, float]] = []  # (gain, resulting loudness)
    for run in range(_LIMIT_MAX_RUNS):
        chain = (
            f"{_remix(options)},volume={gain:.3f}dB,aresample={oversampled},"
            f"alimiter=limit={max(ceiling, 0.0625):.6f}:attack=5:release=50:level=disabled"
            f":latency=1,{_resample(options)}"
        )
        encode = run > 0
        if encode:
            args = _encode_args(src, tmp, chain, options, meter=True)
        else:
            args = _measure_args(src, f"{chain},ebur128=peak=true:framelog=quiet")
        result = await run_ffmpeg(args, timeout=options.timeout)
        _check_encode(result, "limiting" if encode else "metering the limiter")
        if encode:
            encoded_gain = gain
        reached = _parse_ebur128(result.stderr, target).input_i
        logger.debug("limiter run %d on %s: gain %.2f dB -> %.2f LUFS", run, src, gain, reached)
        if not math.isfinite(reached):
            break
        error = target.integrated - reached
        if encode and abs(error) <= LIMIT_TOLERANCE_LU:
            return gain
        history.append((gain, reached))
        slope = 1.0  # a limiter makes loudness grow slower than the gain: secant after 2 runs
        if len(history) >= 2:
            (g1, l1), (g2, l2) = history[-2], history[-1]
            if g2 != g1:
                slope = min(1.0, max(0.1, (l2 - l1) / (g2 - g1)))
        gain = min(gain + error / slope, first_gain + _LIMIT_MAX_EXTRA_GAIN_DB)
    if encoded_gain is None:
        raise FFmpegError(f"the limiter produced no output for {src}")
    logger.warning(
        "%s: the limiter could not bring the loudness within %.1f LU of %.1f LUFS",
        src,
        LIMIT_TOLERANCE_LU,
        target.integrated,
    )
    return encoded_gain


async def _two_pass(src: Path, tmp: Path, options: NormalizeOptions) -> _Outcome:
    target = options.target
    measurement, info = await _measure(src, target, options, "ebur128")
    if not measurement.usable:
        logger.info("%s is silent (I=%s LUFS); transcoding only", src, measurement.input_i)
        await _encode(src, tmp, f"{_remix(options)},{_resample(options)}", options)
        return _Outcome("silent", True, measurement, 0.0, info)
    gain = target.integrated - measurement.input_i
    if measurement.input_tp + gain <= _effective_true_peak(target):
        chain = f"{_remix(options)},volume={gain:.3f}dB,{_resample(options)}"
        await _encode(src, tmp, chain, options)
        return _Outcome("gain", False, measurement, gain, info)
    gain = await _apply_limited(src, tmp, measurement, options)
    return _Outcome("limit", False, measurement, gain, info)


async def _one_pass(src: Path, tmp: Path, options: NormalizeOptions) -> _Outcome:
    info = await probe_audio_async(src, timeout=options.timeout)
    target = options.target
    chain = (
        f"{_remix(options)},{_loudnorm(target, _effective_true_peak(target))},{_resample(options)}"
    )
    # loudnorm logs its statistics at info level
    args = _encode_args(src, tmp, chain, options, loglevel="level+info")
    result = await run_ffmpeg(args, timeout=options.timeout)
    _check_encode(result, "normalizing (loudnorm)")
    measurement = _parse_loudnorm(result.stderr)
    if not measurement.usable:
        return _Outcome("silent", True, measurement, 0.0, info)
    return _Outcome("loudnorm-1pass", False, measurement, None, info)


def _finish(tmp: Path, dst: Path) -> tuple[int, str, int]:
    """Hash and flush the finished temp file, then move it over ``dst``."""
    with tmp.open("rb") as fh:
        sha256 = hash_open_file(fh)
        size = fh.tell()
        os.fsync(fh.fileno())
    duration_ms = get_audio_duration(tmp)
    os.replace(tmp, dst)
    return size, sha256, duration_ms


async def normalize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: NormalizeOptions | None = None,
) -> NormalizeResult:
    """Normalize ``src`` into ``dst`` (see the module docstring for the method).

    ``dst`` only ever appears complete: the output goes to a hidden temporary file in the same
    directory which is renamed over ``dst`` at the end (and removed on any failure, timeout or
    cancellation). Raises :class:`InvalidAudioError` when ``src`` is not valid audio and
    :class:`~core.ffmpeg.FFmpegError` when ffmpeg fails otherwise.
    """
    options = options or NormalizeOptions()
    src_path, dst_path = Path(src), Path(dst)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dst_path, options)
    try:
        if options.two_pass:
            outcome = await _two_pass(src_path, tmp, options)
        else:
            outcome = await _one_pass(src_path, tmp, options)
        size, sha256, duration_ms = await asyncio.to_thread(_finish, tmp, dst_path)
    finally:
        tmp.unlink(missing_ok=True)
    measured = outcome.measurement
    logger.info(
        "normalized %s -> %s (%s, input %s LUFS / %s dBTP, gain %s dB)",
        src_path,
        dst_path,
        outcome.method,
        f"{measured.input_i:.1f}" if measured else "?",
        f"{measured.input_tp:.1f}" if measured else "?",
        f"{outcome.gain_db:+.2f}" if outcome.gain_db is not None else "dynamic",
    )
    return NormalizeResult(
        src=src_path,
        dst=dst_path,
        duration_ms=duration_ms,
        size=size,
        sha256=sha256,
        method=outcome.method,
        silent=outcome.silent,
        measurement=measured,
        gain_db=outcome.gain_db,
        input=outcome.info,
    )


async def normalize_batch(
    items: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    options: NormalizeOptions | None = None,
    concurrency: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[BatchItem]:
    """Normalize many ``(src, dst)`` pairs, at most ``concurrency`` at a time (default: the
    number of CPUs). A failing file never stops the batch: its :class:`BatchItem` carries an
    ``error`` reason instead of a ``result``. ``progress(done, total, item)`` is called as each
    file finishes. Results come back in the order of ``items``.
    """
    options = options or NormalizeOptions()
    workers = max(1, min(concurrency or os.cpu_count() or 1, len(items) or 1))
    pending = iter(enumerate(items))
    answers: list[BatchItem | None] = [None] * len(items)
    done = 0

    async def normalize_one(src: Path, dst: Path) -> BatchItem:
        try:
            return BatchItem(src, dst, result=await normalize_file(src, dst, options))
        except InvalidAudioError as exc:
            reason = exc.reason
        except FFmpegError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"file error: {exc}"
        except Exception as exc:
            logger.exception("unexpected error normalizing %s", src)
            reason = f"unexpected error: {exc!r}"
        logger.warning("could not normalize %s: %s", src, reason)
        return BatchItem(src, dst, error=reason)

    async def worker() -> None:
        nonlocal done
        for index, (src, dst) in pending:
            item = await normalize_one(Path(src), Path(dst))
            answers[index] = item
            done += 1
            if progress is not None:
                try:
                    progress(done, len(items), item)
                except Exception:
                    logger.exception("progress callback failed")

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    return [answer for answer in answers if answer is not None]
