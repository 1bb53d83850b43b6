"""EBU R128 loudness normalization of sound files to Ogg Opus (or mp3).

Two-pass strategy (the default):

1. **Measure** the input's integrated loudness and peak with ffmpeg's ``ebur128`` filter, after
   the same remix to the output's channel count that the output gets. ``ebur128`` costs about a
   plain decode; a ``loudnorm`` analysis pass costs 4-5 times more for the same numbers (it runs
   at 192 kHz). The run decodes the whole file, so it doubles as validation
   (:class:`~core.audio.InvalidAudioError`). The same run also keeps a copy of the decoded
   audio, remixed and resampled to the output's layout and rate, as raw 32-bit float PCM in a
   hidden temporary file next to the destination (up to :data:`PCM_MAX_SECONDS` of it; longer
   inputs are decoded again instead): pass 2 reads that copy, so every input is decoded and
   resampled only once.
2. **Apply**, by what the measurement allows (``gain = target - input loudness``):

   * ``"gain"``: the peak stays under the ceiling (the true-peak target minus
     :data:`TRUE_PEAK_CODEC_MARGIN_DB` for the lossy encoder's overshoot): apply exactly that
     gain with ``volume`` and encode. Cheap and exact: the encoder gets the measured signal
     times a constant, so its loudness is the target by construction and is not re-measured.
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

:func:`normalize_batch` runs a worker thread per unit of concurrency, each keeping the ffmpeg
processes it starts on one CPU when there are at least as many workers as CPUs (ffmpeg hands
every frame between its own threads, which costs much more across CPUs), and runs the pass 1
of a worker's next file in the same ffmpeg process as the current file's encode (one ffmpeg
start-up per file instead of two), using that result only where it is certain.

One-pass mode (``two_pass=False``) is a single ``loudnorm`` pass in its dynamic mode
(``"loudnorm-1pass"``). It is slower than the two-pass path and less accurate (1-2 LU off on
speech with pauses, and short peaky clips are left as they are); it exists for parity with the
classic recipe.

Every output is written to a hidden temporary file next to the destination and renamed over it
at the end; that file and the decoded copy are removed on any failure, timeout or
cancellation. Ogg Opus output is 48 kHz stereo in 20 ms frames (what Discord expects, so the
bot can send the file's packets as they are), encoded at :data:`OPUS_COMPRESSION_LEVEL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from core.ffmpeg import (
    FFmpegError,
    FFmpegResult,
    FFmpegTimeoutError,
    base_args,
    run_ffmpeg,
)
from core.storage import TEMP_PREFIX

__all__ = [
    "DEFAULT_TIMEOUT",
    "LIMIT_TOLERANCE_LU",
    "OPUS_COMPRESSION_LEVEL",
    "PCM_MAX_SECONDS",
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
# Pass 1 keeps the decoded, remixed and resampled audio for pass 2 (32-bit float PCM, 384 kB a
# second at 48 kHz stereo) up to this length; longer inputs are decoded again by pass 2.
PCM_MAX_SECONDS = 120.0
# The decoded copy must be as long as the decode (in seconds, plus this fraction) to be used.
_PCM_LENGTH_TOLERANCE_S = 0.05
_PCM_LENGTH_TOLERANCE_RATIO = 0.01
# normalize_batch runs pass 1 of a file alongside the previous file's encode up to this size.
_ALONGSIDE_MAX_BYTES = 16 * 1024 * 1024
# libopus complexity (ffmpeg's -compression_level, 0-10; ffmpeg's default is 10). Measured with
# libopus in the imageio-ffmpeg build at 128 kb/s stereo: 8, 9 and 10 give bit-identical files;
# 7 drops the stereo "theta RDO" search, which is a fifth of the encoder's CPU time, and stays
# within 0.1 dB of 10 in per-band SNR against the encoder's input (worst band of a dozen
# speech, music, noise and tone files: 0.3 dB) at 3% fewer bits. 6 and below also turn off the
# tonality analysis that gives tonal sounds more bits (a pure-tone file lost up to 12 dB of
# SNR in a band), so 7 is the lowest level that keeps its quality.
OPUS_COMPRESSION_LEVEL = 7
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


def _ebur128(peaks: _Peaks, name: str | None = None) -> str:
    peak = {"none": "", "sample": ":peak=sample", "both": ":peak=sample+true"}[peaks]
    instance = f"@{name}" if name else ""
    return f"ebur128{instance}=framelog=quiet{peak}"


def _loudnorm(target: LoudnessTarget, true_peak: float) -> str:
    return (
        f"loudnorm=I={target.integrated:.2f}:TP={true_peak:.2f}:LRA={target.lra:.2f}"
        ":print_format=json"
    )


def _ceiling(target: LoudnessTarget) -> float:
    """The true peak (dBTP) we aim at before encoding."""
    return max(-9.0, target.true_peak - TRUE_PEAK_CODEC_MARGIN_DB)


def _layout(options: NormalizeOptions) -> str:
    return "mono" if options.channels == 1 else "stereo"


@dataclass(frozen=True)
class _Source:
    """What a pass 2 run reads: the input file itself (decoded again, then remixed and
    resampled), or pass 1's decoded copy of it (raw float PCM already in the output's layout
    and rate)."""

    input_args: tuple[str, ...]
    decoded: bool

    @classmethod
    def file(cls, path: Path) -> _Source:
        return cls(tuple(decode_input_args(path)), decoded=False)

    @classmethod
    def pcm(cls, path: Path, options: NormalizeOptions) -> _Source:
        return cls(
            (
                "-protocol_whitelist",
                "file",
                "-f",
                "f32le",
                "-ar",
                str(options.sample_rate),
                "-ch_layout",
                _layout(options),
                "-i",
                ffmpeg_input(path),
            ),
            decoded=True,
        )

    def chain(self, options: NormalizeOptions, gain: float | None, *after: str) -> str:
        """Filters from this source to the encoder: (remix,) gain, (resample,) ``after``."""
        parts = [] if self.decoded else [_remix(options)]
        if gain is not None:
            parts.append(f"volume={gain:.3f}dB")
        if not self.decoded:
            parts.append(_resample(options))
        parts.extend(after)
        return ",".join(parts) or "anull"


def _measure_args(source: Sequence[str], chain: str) -> list[str]:
    """Decode all of ``source`` (input arguments) through ``chain`` into nothing (logging
    verbosely: the decode statistics are what :func:`~core.audio.interpret_decode` validates)."""
    return [
        *base_args("level+verbose"),
        "-threads",
        "1",
        "-filter_threads",
        "1",
        *source,
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


def _prepare_graph(index: int, options: NormalizeOptions, peaks: _Peaks) -> str:
    """Pass 1 for input ``index``: remix, then meter (``ebur128@m<index>``, padded to
    :data:`_MIN_MEASURE_SECONDS`) and resample to the output rate into ``[p<index>]``.

    The copy keeps frames starting before :data:`PCM_MAX_SECONDS` (timestamps rebuilt from the
    sample count) and drops the rest *without* ending its branch: ffmpeg stops feeding a graph
    whose outputs have all ended, which would cut the meter's input short."""
    i = index
    return (
        f"[{i}:a:0]{_remix(options)},asplit=2[m{i}][r{i}];"
        f"[m{i}]apad=whole_dur={_MIN_MEASURE_SECONDS},{_ebur128(peaks, f'm{i}')},anullsink;"
        f"[r{i}]{_resample(options)},asetpts=N/SR/TB,"
        f"aselect='lt(t,{PCM_MAX_SECONDS:g})'[p{i}]"
    )


def _prepare_args(src: Path, pcm: Path, options: NormalizeOptions, peaks: _Peaks) -> list[str]:
    """Pass 1 of ``src`` on its own, writing the decoded copy to ``pcm``."""
    return [
        *base_args("level+verbose"),
        "-filter_complex_threads",
        "1",
        "-threads",
        "1",
        *decode_input_args(src),
        "-filter_complex",
        _prepare_graph(0, options, peaks),
        "-map",
        "[p0]",
        "-c:a",
        "pcm_f32le",
        "-f",
        "f32le",
        "-y",
        ffmpeg_input(pcm),
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
        "-compression_level",
        str(OPUS_COMPRESSION_LEVEL),
        "-f",
        "ogg",
    ]


def _encode_args(
    source: _Source,
    tmp: Path,
    chain: str,
    options: NormalizeOptions,
    *,
    meter: _Peaks | None = None,
    loglevel: str = "level+error",
    alongside: tuple[Path, Path] | None = None,
) -> list[str]:
    """Read ``source``, filter through ``chain``, encode into ``tmp``. With ``meter``, an
    ebur128 filter also measures exactly what goes into the encoder and logs its summary. With
    ``alongside`` (``(src, pcm)``, never with ``meter``), the same run also does pass 1 of
    another file as input, graph and output #1 (see :func:`_read_alongside`)."""
    graph = f"[0:a:0]{chain}"
    if meter is not None:
        graph += f",asplit=2[out][meter];[meter]{_ebur128(meter)},anullsink"
        loglevel = "level+info"
    else:
        graph += "[out]"
    inputs = ["-threads", "1", *source.input_args]
    graphs = ["-filter_complex", graph]
    extra_output: list[str] = []
    if alongside is not None:
        assert meter is None, "one ebur128 summary per run"
        other, pcm = alongside
        loglevel = "level+verbose"
        inputs += ["-threads", "1", *decode_input_args(other)]
        graphs += ["-filter_complex", _prepare_graph(1, options, _peaks_to_measure(options))]
        extra_output = ["-map", "[p1]", "-c:a", "pcm_f32le", "-f", "f32le", ffmpeg_input(pcm)]
    return [
        *base_args(loglevel),
        "-filter_complex_threads",
        "1",
        *inputs,
        *graphs,
        "-map",
        "[out]",
        "-threads",
        "1",
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
        *extra_output,
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
    result = await run_ffmpeg(
        _measure_args(decode_input_args(path), chain), timeout=options.timeout
    )
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
# Pass 1: measure, validate and keep a decoded copy.


@dataclass(frozen=True)
class _Prepared:
    """Pass 1's findings for one file: its loudness, what its decode found, and the decoded copy
    for pass 2 (None when the input was too long for one, or the copy could not be trusted:
    pass 2 then decodes the file again)."""

    measurement: Measurement
    info: AudioInfo
    pcm: Path | None


def _peaks_to_measure(options: NormalizeOptions) -> _Peaks:
    return "sample" if options.screen_true_peak else "both"


def _pcm_path(dst: Path) -> Path:
    return dst.with_name(f"{TEMP_PREFIX}{dst.name}.{secrets.token_hex(6)}.pcm")


def _complete_pcm(pcm: Path, info: AudioInfo, options: NormalizeOptions) -> bool:
    """Whether the decoded copy holds the whole decode: not cut at :data:`PCM_MAX_SECONDS`, and
    as long as the decode."""
    frame_bytes = 4 * options.channels
    try:
        size = pcm.stat().st_size
    except OSError:
        return False
    seconds = size / (frame_bytes * options.sample_rate)
    if size == 0 or size % frame_bytes or seconds >= PCM_MAX_SECONDS:
        return False
    decoded = info.duration_ms / 1000
    return abs(seconds - decoded) <= (
        _PCM_LENGTH_TOLERANCE_S + _PCM_LENGTH_TOLERANCE_RATIO * decoded
    )


_OUTPUT_ERROR_RE = re.compile(
    r"^\[(?:out|aost)#\d+[^\]]*\] \[(?:error|fatal)\] .*$|Error opening output file.*$",
    re.MULTILINE,
)


def _check_pass1_output(result: FFmpegResult) -> None:
    """A failed run that could not write the decoded copy (disk full, say) is our problem, not
    the input's: raise :class:`FFmpegError` rather than blame the file."""
    if result.returncode == 0:
        return
    found = _OUTPUT_ERROR_RE.search(result.stderr)
    if found is not None:
        raise FFmpegError(
            f"ffmpeg could not write the decoded audio (exit {result.returncode}): "
            f"{found.group(0)}",
            returncode=result.returncode,
            stderr=result.stderr,
        )


def _keep_pcm(pcm: Path, info: AudioInfo, options: NormalizeOptions) -> Path | None:
    if _complete_pcm(pcm, info, options):
        return pcm
    pcm.unlink(missing_ok=True)
    return None


async def _prepare(src: Path, dst: Path, options: NormalizeOptions) -> _Prepared:
    """Pass 1: decode ``src`` once to validate it, measure it and keep a decoded copy next to
    ``dst``. Raises :class:`InvalidAudioError` for files that are not valid audio; leaves no
    decoded copy behind when it raises."""
    await asyncio.to_thread(check_audio_file, src)
    pcm = _pcm_path(dst)
    try:
        result = await run_ffmpeg(
            _prepare_args(src, pcm, options, _peaks_to_measure(options)),
            timeout=options.timeout,
        )
        _check_pass1_output(result)
        info = interpret_decode(result)
        measurement = _parse_ebur128(result.stderr, options.target)
        kept = await asyncio.to_thread(_keep_pcm, pcm, info, options)
    except BaseException:
        pcm.unlink(missing_ok=True)
        raise
    return _Prepared(measurement, info, kept)


# Pass 1 of the next file alongside an encode (normalize_batch). Every line ffmpeg logs about
# input K, its decoder, filter graph K or output K carries a tag such as "[in#K/mp3 @ 0x...]",
# "[aist#K:0/mp3 @ ...]", "[fc#K @ ...]", "[out#K/f32le @ ...]" or "[aost#K:0/... @ ...]"; the
# dump of input K starts with "Input #K, " and goes on with indented lines. Summaries of two
# ebur128 filters in one run cannot be told apart reliably (each is logged in several pieces,
# and those of concurrent filter graphs interleave, even without their tags), so a run with
# another file alongside never has a meter of its own.
_TAGGED_RE = re.compile(r"^\[(?:in|aist|fc|out|aost)#(\d+)[:/ ]")
_DUMP_RE = re.compile(r"^\[info\] Input #(\d+), ")
_DUMP_LINE_PREFIX = "[info]   "
_ERROR_LEVEL_RE = re.compile(r"(?:^|\] )\[(?:error|fatal|panic)\] ")
_STDERR_DROPPED = "lines of ffmpeg output dropped"
_NUMBERED_RE = re.compile(r"#(\d+)(?=[:,])")


@dataclass
class _Handover:
    """What a :func:`normalize_batch` worker passes to :func:`normalize_file` for one file:
    ``prepared``, pass 1 of this file if it was done alongside the previous file's encode, and
    ``next_file``, the ``(src, dst)`` the worker will do next, whose pass 1 may run in the same
    ffmpeg process as this file's encode (one start-up less). ``next_prepared`` is set to that
    result when it worked and can be trusted (the decoded copy is then the worker's to hand on,
    or to delete)."""

    prepared: _Prepared | None = None
    next_file: tuple[Path, Path] | None = None
    next_prepared: _Prepared | None = None


def _input_log(stderr: str, index: int) -> str | None:
    """The lines of a run's log about input ``index`` (renumbered 0), which read like the log
    of a run of that input alone for :func:`~core.audio.interpret_decode`. None when anything
    could concern it without saying so: an error line without an input's tag, or lines dropped
    from the captured log."""
    if _STDERR_DROPPED in stderr:
        return None
    kept: list[str] = []
    in_dump = False
    for line in stderr.splitlines():
        if not (in_dump and line.startswith(_DUMP_LINE_PREFIX)):
            in_dump = False
            tagged = _DUMP_RE.match(line) or _TAGGED_RE.match(line)
            if tagged is None:
                if _ERROR_LEVEL_RE.search(line):
                    return None
                continue
            if int(tagged.group(1)) != index:
                continue
            in_dump = line.startswith("[info] Input #")
        kept.append(_NUMBERED_RE.sub(lambda found: _renumbered(found, index), line))
    return "\n".join(kept)


def _renumbered(found: re.Match[str], index: int) -> str:
    return "#0" if int(found.group(1)) == index else found.group(0)


def _read_alongside(stderr: str, pcm: Path, options: NormalizeOptions) -> _Prepared | None:
    """Pass 1's result for input #1 of a successful encode run with a file alongside, or None
    (decoded copy deleted) when it is not certain, or the file would be rejected: that file
    then gets its own pass 1, which gives the exact result or error reason."""
    log = _input_log(stderr, 1)
    try:
        if log is None:
            raise FFmpegError("the log of the file alongside is ambiguous")
        info = interpret_decode(FFmpegResult(0, log))
        measurement = _parse_ebur128(stderr, options.target)
    except (InvalidAudioError, FFmpegError) as exc:
        logger.debug("pass 1 alongside an encode not used: %s", exc)
        pcm.unlink(missing_ok=True)
        return None
    return _Prepared(measurement, info, _keep_pcm(pcm, info, options))


def _can_go_alongside(src: Path, dst: Path) -> bool:
    """Whether ``src`` may have its pass 1 alongside another file's encode: it passes the cheap
    checks (otherwise its own pass 1 reports why), it is small (an ffmpeg start-up is nothing
    next to a long decode, and the other file's encode waits for the whole run), its name
    cannot fake log lines, and the folder for its decoded copy exists."""
    if any(char in f"{src}{dst}" for char in "\r\n"):
        return False
    try:
        check_audio_file(src)
        if src.stat().st_size > _ALONGSIDE_MAX_BYTES:
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (InvalidAudioError, OSError):
        return False
    return True


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
    # The shared temporary prefix: a crash leaves a file that the next start clears away.
    return dst.with_name(f"{TEMP_PREFIX}{dst.name}.{secrets.token_hex(6)}.part{suffix}")


async def _encode(
    source: _Source,
    tmp: Path,
    chain: str,
    options: NormalizeOptions,
    *,
    meter: _Peaks | None = None,
) -> FFmpegResult:
    result = await run_ffmpeg(
        _encode_args(source, tmp, chain, options, meter=meter), timeout=options.timeout
    )
    _check_encode(result, "encoding")
    return result


async def _encode_plain(
    source: _Source,
    tmp: Path,
    chain: str,
    options: NormalizeOptions,
    handover: _Handover | None,
) -> None:
    """An encode that measures nothing, with pass 1 of ``handover.next_file`` alongside when
    there is one. This file's outcome never depends on the other one: if the run fails or
    times out, the encode runs again on its own."""
    if handover is None or handover.next_file is None:
        await _encode(source, tmp, chain, options)
        return
    other, other_dst = handover.next_file
    if not await asyncio.to_thread(_can_go_alongside, other, other_dst):
        await _encode(source, tmp, chain, options)
        return
    pcm = _pcm_path(other_dst)
    args = _encode_args(source, tmp, chain, options, alongside=(other, pcm))
    try:
        try:
            result: FFmpegResult | None = await run_ffmpeg(args, timeout=options.timeout)
        except FFmpegTimeoutError:
            result = None
        if result is None or result.returncode != 0:
            pcm.unlink(missing_ok=True)
            await _encode(source, tmp, chain, options)
            return
        handover.next_prepared = await asyncio.to_thread(
            _read_alongside, result.stderr, pcm, options
        )
    except BaseException:
        pcm.unlink(missing_ok=True)
        handover.next_prepared = None
        raise


def _limiter(ceiling_db: float) -> str:
    limit = min(1.0, max(10 ** (ceiling_db / 20), 0.0625))
    return f"alimiter=limit={limit:.6f}:attack=5:release=50:level=disabled:latency=1"


async def _apply_limited(
    src: Path, source: _Source, tmp: Path, measurement: Measurement, options: NormalizeOptions
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
        chain = source.chain(options, gain, _limiter(limiter_ceiling))
        if run == 0:
            result = await run_ffmpeg(
                _measure_args(source.input_args, f"{chain},{_ebur128('none')}"),
                timeout=options.timeout,
            )
            _check_encode(result, "metering the limiter")
        else:
            result = await _encode(source, tmp, chain, options, meter="both")
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


async def _two_pass(
    src: Path,
    tmp: Path,
    prepared: _Prepared,
    options: NormalizeOptions,
    handover: _Handover | None = None,
) -> _Outcome:
    target = options.target
    measurement, info = prepared.measurement, prepared.info
    source = _Source.file(src) if prepared.pcm is None else _Source.pcm(prepared.pcm, options)
    if not measurement.usable:
        logger.info("%s is silent (I=%s LUFS); transcoding only", src, measurement.input_i)
        await _encode_plain(source, tmp, source.chain(options, None), options, handover)
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

    if fits and not verify:
        await _encode_plain(source, tmp, source.chain(options, gain), options, handover)
        return _Outcome("gain", measurement, gain, info)
    if fits:
        result = await _encode(source, tmp, source.chain(options, gain), options, meter="both")
        peak = _parse_ebur128(result.stderr, target).input_tp
        measurement = dataclasses.replace(measurement, input_tp=peak - gain)
        if peak <= ceiling:
            return _Outcome("gain", measurement, gain, info)
        logger.debug("%s: true peak %.2f dBTP after gain is over %.2f", src, peak, ceiling)
    gain = await _apply_limited(src, source, tmp, measurement, options)
    return _Outcome("limit", measurement, gain, info)


async def _one_pass(src: Path, tmp: Path, options: NormalizeOptions) -> _Outcome:
    info = await probe_audio_async(src, timeout=options.timeout)
    target = options.target
    chain = f"{_remix(options)},{_loudnorm(target, _ceiling(target))},{_resample(options)}"
    # loudnorm logs its statistics at info level
    args = _encode_args(_Source.file(src), tmp, chain, options, loglevel="level+info")
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
    *,
    _handover: _Handover | None = None,
) -> NormalizeResult:
    """Normalize ``src`` into ``dst`` (see the module docstring for how).

    ``dst`` only ever appears complete: the output goes to a hidden temporary file in the same
    directory (created if needed) which is renamed over ``dst`` at the end, and removed on any
    failure, timeout or cancellation, as is pass 1's decoded copy. Raises
    :class:`InvalidAudioError` when ``src`` is not valid audio and
    :class:`~core.ffmpeg.FFmpegError` when ffmpeg fails otherwise.

    ``_handover`` is :func:`normalize_batch`'s (see :class:`_Handover`); this call owns and
    deletes the decoded copy of ``_handover.prepared``.
    """
    options = options or NormalizeOptions()
    src_path, dst_path = Path(src), Path(dst)
    prepared = _handover.prepared if _handover is not None else None
    try:
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(dst_path, options)
        try:
            if options.two_pass:
                if prepared is None:
                    prepared = await _prepare(src_path, dst_path, options)
                outcome = await _two_pass(src_path, tmp, prepared, options, _handover)
            else:
                outcome = await _one_pass(src_path, tmp, options)
            size, sha256, duration_ms = await asyncio.to_thread(_finish, tmp, dst_path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        if prepared is not None and prepared.pcm is not None:
            prepared.pcm.unlink(missing_ok=True)
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


def _worker_cpus(workers: int) -> list[int | None]:
    """The CPU each batch worker is pinned to, or None for all when pinning would not help.

    ffmpeg (7 and later) runs a thread per demuxer, decoder, filter graph, encoder and muxer and
    hands every frame between them. On a virtual machine, those threads waking each other up
    across CPUs is expensive: in a profile of pass 1 and pass 2, over 40% of the CPU time was
    spent in the kernel, mostly on such wake-ups. With a process per CPU anyway (at least as
    many workers as CPUs), keeping each worker's ffmpeg processes on one CPU removes much of
    that without losing parallelism (measured on the benchmark's 50 files on 2 CPUs: about 11%
    less CPU time and 20-25% less wall time). With fewer workers than CPUs nothing is pinned,
    so that a lone ffmpeg can still spread its threads."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return [None] * workers
    if len(cpus) < 2 or workers < len(cpus):
        return [None] * workers
    return [cpus[slot % len(cpus)] for slot in range(workers)]


def _pin_this_thread(cpu: int) -> None:
    """Pin the calling thread (and so every process and thread it starts from now on)."""
    try:
        os.sched_setaffinity(0, {cpu})  # pid 0: the calling thread, on Linux
    except OSError as exc:
        logger.debug("could not pin a normalize worker to CPU %d: %s", cpu, exc)


async def normalize_batch(
    items: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    options: NormalizeOptions | None = None,
    concurrency: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[BatchItem]:
    """Normalize many ``(src, dst)`` pairs, at most ``concurrency`` at a time (default: the
    number of CPUs). A failing file never stops the batch: its :class:`BatchItem` carries an
    ``error`` reason instead of a ``result``. ``progress(done, total, item)`` is called as each
    file finishes, from the caller's event loop. Results come back in the order of ``items``.

    Each worker is a thread with its own event loop that normalizes one file at a time
    (:func:`normalize_file`), pinned to a CPU when there are at least as many workers as CPUs
    (see :func:`_worker_cpus`): the ffmpeg processes it starts inherit the pin. A worker runs
    the pass 1 of its next file in the same ffmpeg process as the encode of the current one when
    that encode measures nothing (the common case), which saves an ffmpeg start-up per file;
    the next file's result is only used when it is certain (see :func:`_read_alongside`), so
    every result and error is the one :func:`normalize_file` gives. Cancelling the batch cancels
    every worker and waits for them, so that their ffmpeg processes are killed and their
    temporary files removed before the cancellation goes on.
    """
    options = options or NormalizeOptions()
    if not items:
        return []
    workers = max(1, min(concurrency or os.cpu_count() or 1, len(items)))
    pairs = [(Path(src), Path(dst)) for src, dst in items]
    answers: list[BatchItem | None] = [None] * len(pairs)
    pending = iter(enumerate(pairs))
    guard = threading.Lock()  # for ``pending``, ``running`` and ``stopping``
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = []
    stopping = False
    loop = asyncio.get_running_loop()
    done = 0

    def report(item: BatchItem) -> None:  # on the caller's loop
        nonlocal done
        done += 1
        if progress is not None:
            try:
                progress(done, len(pairs), item)
            except Exception:
                logger.exception("progress callback failed")

    async def normalize_one(src: Path, dst: Path, handover: _Handover) -> BatchItem:
        try:
            result = await normalize_file(src, dst, options, _handover=handover)
            return BatchItem(src, dst, result=result)
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

    def claim() -> tuple[int, tuple[Path, Path]] | None:
        with guard:
            return None if stopping else next(pending, None)

    async def work() -> None:  # on a worker's loop
        # A worker claims the file it will do after the current one before starting it, so
        # that the next file's pass 1 can run alongside the current file's encode.
        job = claim()
        prepared: _Prepared | None = None
        handover: _Handover | None = None
        try:
            while job is not None:
                index, (src, dst) = job
                following = claim() if options.two_pass else None
                handover = _Handover(prepared, following[1] if following else None)
                prepared = None  # normalize_file owns it now
                item = await normalize_one(src, dst, handover)
                prepared, handover = handover.next_prepared, None
                answers[index] = item
                loop.call_soon_threadsafe(report, item)
                job = following
        finally:  # cancelled: a decoded copy made for a file that will not be done now
            for left in (prepared, handover.next_prepared if handover else None):
                if left is not None and left.pcm is not None:
                    left.pcm.unlink(missing_ok=True)

    def worker(cpu: int | None) -> None:  # a worker thread
        if cpu is not None:
            _pin_this_thread(cpu)
        own = asyncio.new_event_loop()
        try:
            with guard:
                if stopping:
                    return
                task = own.create_task(work())
                running.append((own, task))
            with contextlib.suppress(asyncio.CancelledError):
                own.run_until_complete(task)
        finally:
            own.run_until_complete(own.shutdown_default_executor())
            own.close()

    threads = [_in_thread(worker, cpu) for cpu in _worker_cpus(workers)]
    finished = asyncio.gather(*threads)
    finished.add_done_callback(_retrieve)  # its error, if any, is raised through ``threads``
    try:
        await asyncio.shield(finished)
    except BaseException:  # cancelled, or a worker failed: stop the others, wait for them
        with guard:
            stopping = True
            for own, task in running:
                own.call_soon_threadsafe(task.cancel)
        await asyncio.wait(threads)
        raise
    return [answer for answer in answers if answer is not None]


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _in_thread(target: Callable[..., None], *args: object) -> asyncio.Future[None]:
    """Run ``target(*args)`` in a new thread (not the loop's executor: these run for the whole
    batch); the future completes when it returns."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name="normalize-worker", daemon=True).start()
    return future
