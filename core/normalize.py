"""EBU R128 loudness normalization of sound files to Ogg Opus (or mp3).

Two-pass strategy (the default):

1. **Measure** the input's integrated loudness and peak with ffmpeg's ``ebur128`` filter, after
   the same remix to the output's channel count that the output gets. ``ebur128`` costs about a
   plain decode; a ``loudnorm`` analysis pass costs 4-5 times more for the same numbers (it runs
   at 192 kHz). The run decodes the whole file, so it doubles as validation
   (:class:`~core.audio.InvalidAudioError`).
2. **Apply**, by what the measurement allows (``gain = target - input loudness``):

   * ``"gain"``: the peak stays under the ceiling (the true-peak target minus
     :data:`TRUE_PEAK_CODEC_MARGIN_DB` for the lossy encoder's overshoot): apply exactly that
     gain with ``volume`` while resampling and encoding. Cheap and exact.
   * ``"limit"``: the peak would go over the ceiling (a peak-to-loudness ratio above about
     20.5 dB: clicks, drums, gunshots): the gain plus a look-ahead limiter, the gain corrected
     from metering until the integrated loudness lands within :data:`LIMIT_TOLERANCE_LU` of the
     target, and the true peak of what is encoded metered too (the limiter's ceiling is lowered
     if inter-sample peaks still go over). ``loudnorm`` would fall back to its dynamic mode
     here, which misses the integrated target by more than 1 LU on such material and leaves
     clips shorter than its 3 s window untouched.
   * ``"silent"``: digital silence, or everything under the -70 LUFS absolute gate, is only
     transcoded, and flagged.

   True peak screening (``NormalizeOptions.screen_true_peak``, on by default): measuring the
   true peak (4x oversampled) costs as much as the rest of the analysis, and most files do not
   need it, so pass 1 measures the *sample* peak. The true peak is never below the sample peak,
   so ``sample peak + gain`` over the ceiling means ``"limit"`` for sure; under the ceiling by at
   least :data:`TRUE_PEAK_SCREEN_MARGIN_DB` means ``"gain"`` (inter-sample peaks of real audio
   stay well under that); in between, the encode run also measures the true peak of exactly
   what it encodes and falls back to ``"limit"`` if it is over the ceiling.

One-pass mode (``two_pass=False``) is a single ``loudnorm`` pass in its dynamic mode
(``"loudnorm-1pass"``). It is slower than the two-pass path and less accurate (1-2 LU off on
speech with pauses, and short peaky clips are left as they are); it exists for parity with the
classic recipe.

Every output is written to a hidden temporary file next to the destination and renamed over it
at the end. Ogg Opus output is 48 kHz stereo in 20 ms frames (what Discord expects, so the bot
can send the file's packets as they are).
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    "DEFAULT_TIMEOUT",
    "LIMIT_TOLERANCE_LU",
    "TRUE_PEAK_CODEC_MARGIN_DB",
    "TRUE_PEAK_SCREEN_MARGIN_DB",
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
_Peaks = Literal["none", "sample", "both"]

DEFAULT_TIMEOUT = 600.0
# Lossy encoders overshoot the true peak of what they are fed by a few tenths of a dB; aim this
# much under the target so that the *decoded* output stays at or under it.
TRUE_PEAK_CODEC_MARGIN_DB = 0.5
# Sample peak this far under the ceiling: no true peak measurement needed (see module doc).
TRUE_PEAK_SCREEN_MARGIN_DB = 6.0
# Below this input rate inter-sample peaks can be large; such files always get a true peak.
_SCREEN_MIN_SAMPLE_RATE = 32000
# The limiter path re-runs until the integrated loudness is this close to the target.
LIMIT_TOLERANCE_LU = 0.5
_LIMIT_MAX_RUNS = 5  # one metering run, then up to four encodes
# The limiter runs at the output rate, its ceiling this far under ours for inter-sample peaks.
_LIMITER_ISP_MARGIN_DB = 1.0
_LIMIT_MAX_EXTRA_GAIN_DB = 24.0
# Integrated loudness at or below the absolute gate means "nothing to measure".
_ABSOLUTE_GATE_LUFS = -70.0
# ebur128 integrates 400 ms blocks: shorter clips are padded with silence to this length for
# measuring, so they still get a (slightly low, hence safe) loudness instead of none.
_MIN_MEASURE_SECONDS = 0.5
_OPUS_SAMPLE_RATES = (48000, 24000, 16000, 12000, 8000)
_BITRATE_RE = re.compile(r"^\d+(?:\.\d+)?[kKM]?$")


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
    screen_true_peak: bool = True  # False: always measure the input's true peak in pass 1

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
    """Loudness of an input, after the remix to the output's channel count.

    ``input_tp`` is the true peak in dBTP, NaN when it was not measured (true peak screening,
    see the module doc); ``input_sample_peak`` the sample peak in dBFS, NaN when not measured.
    ``target_offset`` is the gain in dB that brings ``input_i`` to the target (the ``loudnorm``
    method reports loudnorm's own value). Silence measures -inf or -70 LUFS: see :attr:`usable`.
    """

    input_i: float
    input_tp: float
    input_lra: float
    input_thresh: float
    target_offset: float
    input_sample_peak: float = math.nan

    @property
    def usable(self) -> bool:
        """False for silence (nothing above the absolute gate) and unreadable values."""
        return math.isfinite(self.input_i) and self.input_i > _ABSOLUTE_GATE_LUFS + 0.05


@dataclass(frozen=True)
class NormalizeResult:
    src: Path
    dst: Path
    duration_ms: int  # of the output
    size: int  # of the output, bytes
    sha256: str  # of the output
    method: Method
    silent: bool
    measurement: Measurement | None  # the input's loudness
    gain_db: float | None  # linear gain applied ("gain", "limit"); 0 for "silent"; None: dynamic
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
    """Parse the ``Summary:`` block the ebur128 filter logs when its input ends.

    Its sections: "Integrated loudness" (I, Threshold), "Loudness range" (LRA, ...), then
    "Sample peak" and/or "True peak" (each a "Peak" line) only when asked to measure them.
    """
    _, found, summary = stderr.rpartition("Summary:")
    if not found:
        raise FFmpegError("ebur128 printed no summary", stderr=stderr)
    integrated, _, rest = summary.partition("Loudness range:")
    loudness_range, _, peaks = rest.partition("Sample peak:")
    if not peaks:
        loudness_range, _, peaks = rest.partition("True peak:")
        sample_part, true_part = "", peaks
    else:
        sample_part, _, true_part = peaks.partition("True peak:")
    input_i = _number_after("I", integrated)
    return Measurement(
        input_i=input_i,
        input_tp=_number_after("Peak", true_part) if true_part.strip() else math.nan,
        input_lra=_number_after("LRA", loudness_range),
        input_thresh=_number_after("Threshold", integrated),
        target_offset=target.integrated - input_i if math.isfinite(input_i) else 0.0,
        input_sample_peak=_number_after("Peak", sample_part) if sample_part else math.nan,
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


def _remix(options: NormalizeOptions) -> str:
    # Measure and process after the same remix the output gets: a mono file played as
    # stereo has a 3 dB lower true peak per channel than the mono original, for example.
    layout = "mono" if options.channels == 1 else "stereo"
    return f"aformat=sample_fmts=flt|fltp:channel_layouts={layout}"


def _resample(options: NormalizeOptions) -> str:
    return f"aresample={options.sample_rate}"


def _ebur128(peaks: _Peaks) -> str:
    peak = {"none": "", "sample": ":peak=sample", "both": ":peak=sample+true"}[peaks]
    return f"ebur128=framelog=quiet{peak}"


def _loudnorm(target: LoudnessTarget, true_peak: float) -> str:
    return (
        f"loudnorm=I={target.integrated:.2f}:TP={true_peak:.2f}:LRA={target.lra:.2f}"
        ":print_format=json"
    )


def _ceiling(target: LoudnessTarget) -> float:
    """The true peak (dBTP) we aim at before encoding."""
    return max(-9.0, target.true_peak - TRUE_PEAK_CODEC_MARGIN_DB)


def _measure_args(path: Path, chain: str) -> list[str]:
    """Decode all of ``path`` through ``chain`` into nothing (logging verbosely: the decode
    statistics are what :func:`~core.audio.interpret_decode` validates)."""
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
    meter: _Peaks | None = None,
    loglevel: str = "level+error",
) -> list[str]:
    """Decode ``src``, filter through ``chain``, encode into ``tmp``. With ``meter``, an
    ebur128 filter also measures exactly what goes into the encoder and logs its summary."""
    graph = f"[0:a:0]{chain}"
    if meter is not None:
        graph += f",asplit=2[out][meter];[meter]{_ebur128(meter)},anullsink"
        loglevel = "level+info"
    else:
        graph += "[out]"
    return [
        *base_args(loglevel),
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
    path: Path, options: NormalizeOptions, method: MeasureMethod, peaks: _Peaks
) -> tuple[Measurement, AudioInfo]:
    """Decode all of ``path`` once: validate it and measure its loudness."""
    if method == "ebur128":
        meter = _ebur128(peaks)
    else:
        meter = _loudnorm(options.target, options.target.true_peak)
    chain = f"{_remix(options)},apad=whole_dur={_MIN_MEASURE_SECONDS},{meter}"
    await asyncio.to_thread(check_audio_file, path)
    result = await run_ffmpeg(_measure_args(path, chain), timeout=options.timeout)
    info = interpret_decode(result)
    if method == "ebur128":
        measurement = _parse_ebur128(result.stderr, options.target)
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

    ``method="ebur128"`` (default) uses the ebur128 filter (and also reports the sample peak);
    ``"loudnorm"`` a loudnorm analysis pass, the classic first pass, 4-5 times as expensive.
    The file is measured after a remix to ``channels``, as it will be played. Raises
    :class:`InvalidAudioError` for files that are not valid audio; silence gives a measurement
    whose ``usable`` is False.
    """
    options = NormalizeOptions(
        target=target or LoudnessTarget(), channels=channels, timeout=timeout
    )
    measurement, _ = await _measure(Path(path), options, method, "both")
    return measurement


# --------------------------------------------------------------------------------------------
# Normalizing.


@dataclass
class _Outcome:
    method: Method
    measurement: Measurement | None
    gain_db: float | None
    info: AudioInfo | None

    @property
    def silent(self) -> bool:
        return self.method == "silent"


def _temp_path(dst: Path, options: NormalizeOptions) -> Path:
    suffix = ".mp3" if options.output_format == "mp3" else ".ogg"
    return dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.part{suffix}")


def _gain_chain(gain: float, options: NormalizeOptions) -> str:
    return f"{_remix(options)},volume={gain:.3f}dB,{_resample(options)}"


async def _encode(
    src: Path, tmp: Path, chain: str, options: NormalizeOptions, *, meter: _Peaks | None = None
) -> FFmpegResult:
    result = await run_ffmpeg(
        _encode_args(src, tmp, chain, options, meter=meter), timeout=options.timeout
    )
    _check_encode(result, "encoding")
    return result


def _limiter(ceiling_db: float) -> str:
    limit = min(1.0, max(10 ** (ceiling_db / 20), 0.0625))
    return f"alimiter=limit={limit:.6f}:attack=5:release=50:level=disabled:latency=1"


async def _apply_limited(
    src: Path, tmp: Path, measurement: Measurement, options: NormalizeOptions
) -> float:
    """Gain + look-ahead limiter, iterated until loudness and true peak are both on target.

    Limiting removes some loudness, so the gain has to be a little higher than
    ``target - input``; it is found by metering. The limiter works on the output-rate signal
    with its ceiling :data:`_LIMITER_ISP_MARGIN_DB` under ours, for the peaks between samples
    (oversampling it 4x costs three times as much); every encoding run meters the true peak of
    exactly what it encodes and lowers the limiter's ceiling if that was not enough. The first
    run only meters (no encode) to estimate the loudness the limiter takes away; the last
    encoding run's output is the one kept. Returns the gain used for it.
    """
    target = options.target
    ceiling = _ceiling(target)
    limiter_ceiling = ceiling - _LIMITER_ISP_MARGIN_DB
    first_gain = target.integrated - measurement.input_i
    gain = first_gain
    encoded_gain: float | None = None
    history: list[tuple[float, float]] = []  # (gain, resulting loudness)
    for run in range(_LIMIT_MAX_RUNS):
        chain = (
            f"{_remix(options)},volume={gain:.3f}dB,{_resample(options)},"
            f"{_limiter(limiter_ceiling)}"
        )
        if run == 0:
            result = await run_ffmpeg(
                _measure_args(src, f"{chain},{_ebur128('none')}"), timeout=options.timeout
            )
            _check_encode(result, "metering the limiter")
        else:
            result = await _encode(src, tmp, chain, options, meter="both")
            encoded_gain = gain
        reached = _parse_ebur128(result.stderr, target)
        logger.debug(
            "limiter run %d on %s: gain %.2f dB, ceiling %.2f -> %.2f LUFS, %.2f dBTP",
            run,
            src,
            gain,
            limiter_ceiling,
            reached.input_i,
            reached.input_tp,
        )
        if not math.isfinite(reached.input_i):
            break
        error = target.integrated - reached.input_i
        peak_excess = reached.input_tp - ceiling  # NaN on the metering run: compares False
        if run > 0 and abs(error) <= LIMIT_TOLERANCE_LU and not peak_excess > 0:
            return gain
        if peak_excess > 0:
            limiter_ceiling -= peak_excess + 0.1
        history.append((gain, reached.input_i))
        slope = 1.0  # a limiter makes loudness grow slower than gain: use the secant once known
        if len(history) >= 2:
            (g1, l1), (g2, l2) = history[-2], history[-1]
            if g2 != g1:
                slope = min(1.0, max(0.1, (l2 - l1) / (g2 - g1)))
        gain = min(gain + error / slope, first_gain + _LIMIT_MAX_EXTRA_GAIN_DB)
    if encoded_gain is None:
        raise FFmpegError(f"the limiter produced no output for {src}")
    logger.warning(
        "%s: could not reach %.1f LUFS (+-%.1f) under %.1f dBTP; keeping the closest try",
        src,
        target.integrated,
        LIMIT_TOLERANCE_LU,
        ceiling,
    )
    return encoded_gain


async def _two_pass(src: Path, tmp: Path, options: NormalizeOptions) -> _Outcome:
    target = options.target
    peaks: _Peaks = "sample" if options.screen_true_peak else "both"
    measurement, info = await _measure(src, options, "ebur128", peaks)
    if not measurement.usable:
        logger.info("%s is silent (I=%s LUFS); transcoding only", src, measurement.input_i)
        await _encode(src, tmp, f"{_remix(options)},{_resample(options)}", options)
        return _Outcome("silent", measurement, 0.0, info)

    gain = target.integrated - measurement.input_i
    ceiling = _ceiling(target)
    if math.isfinite(measurement.input_tp):  # the true peak is known
        fits, verify = measurement.input_tp + gain <= ceiling, False
    else:  # screen with the sample peak, which the true peak is never below
        headroom = ceiling - (measurement.input_sample_peak + gain)
        fits = headroom >= 0
        verify = fits and (
            headroom < TRUE_PEAK_SCREEN_MARGIN_DB or info.sample_rate < _SCREEN_MIN_SAMPLE_RATE
        )

    if fits:
        result = await _encode(
            src, tmp, _gain_chain(gain, options), options, meter="both" if verify else None
        )
        if not verify:
            return _Outcome("gain", measurement, gain, info)
        peak = _parse_ebur128(result.stderr, target).input_tp
        measurement = dataclasses.replace(measurement, input_tp=peak - gain)
        if peak <= ceiling:
            return _Outcome("gain", measurement, gain, info)
        logger.debug("%s: true peak %.2f dBTP after gain is over %.2f", src, peak, ceiling)
    gain = await _apply_limited(src, tmp, measurement, options)
    return _Outcome("limit", measurement, gain, info)


async def _one_pass(src: Path, tmp: Path, options: NormalizeOptions) -> _Outcome:
    info = await probe_audio_async(src, timeout=options.timeout)
    target = options.target
    chain = f"{_remix(options)},{_loudnorm(target, _ceiling(target))},{_resample(options)}"
    # loudnorm logs its statistics at info level
    args = _encode_args(src, tmp, chain, options, loglevel="level+info")
    result = await run_ffmpeg(args, timeout=options.timeout)
    _check_encode(result, "normalizing (loudnorm)")
    measurement = _parse_loudnorm(result.stderr)
    if not measurement.usable:
        return _Outcome("silent", measurement, 0.0, info)
    return _Outcome("loudnorm-1pass", measurement, None, info)


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
    """Normalize ``src`` into ``dst`` (see the module docstring for how).

    ``dst`` only ever appears complete: the output goes to a hidden temporary file in the same
    directory (created if needed) which is renamed over ``dst`` at the end, and removed on any
    failure, timeout or cancellation. Raises :class:`InvalidAudioError` when ``src`` is not
    valid audio and :class:`~core.ffmpeg.FFmpegError` when ffmpeg fails otherwise.
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
    gain = None if outcome.gain_db is None else round(outcome.gain_db, 3)
    logger.info(
        "normalized %s -> %s: %s, input %s LUFS, gain %s dB",
        src_path,
        dst_path,
        outcome.method,
        f"{measured.input_i:.1f}" if measured else "?",
        "dynamic" if gain is None else f"{gain:+.2f}",
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
        gain_db=gain,
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
