"""File-level audio utilities: hashing, sizes, durations and "is this really audio?" probing.

Probing decodes the whole first audio stream with ffmpeg (no ffprobe) and rejects anything a
player could not play properly with an :class:`InvalidAudioError` carrying a human reason.
Everything that runs ffmpeg exists in a blocking and an ``async`` flavour; the blocking ones are
safe to call through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from core.errors import InvalidInput
from core.ffmpeg import (
    FFmpegResult,
    FFmpegTimeoutError,
    base_args,
    run_ffmpeg,
    run_ffmpeg_sync,
)

__all__ = [
    "ACCEPTED_INPUT_FORMATS",
    "DEFAULT_PROBE_TIMEOUT",
    "AudioInfo",
    "InvalidAudioError",
    "check_audio_file",
    "decode_input_args",
    "ffmpeg_input",
    "get_audio_duration",
    "get_audio_duration_async",
    "get_declared_duration",
    "get_file_hash",
    "get_file_hash_async",
    "get_file_size",
    "hash_open_file",
    "interpret_decode",
    "probe_audio",
    "probe_audio_async",
]

logger = logging.getLogger(__name__)

HASH_CHUNK_SIZE = 1024 * 1024
DEFAULT_PROBE_TIMEOUT = 120.0

# ffmpeg demuxers we accept input from (ffmpeg's -format_whitelist). Keeping playlists (hls),
# concat lists, images and raw network formats out means an uploaded file can never make ffmpeg
# open other files or URLs. "mov" covers mp4/m4a/3gp, "matroska" covers webm.
ACCEPTED_INPUT_FORMATS: tuple[str, ...] = (
    "mp3",
    "ogg",
    "flac",
    "wav",
    "w64",
    "aiff",
    "caf",
    "mov",
    "matroska",
    "aac",
    "ac3",
    "eac3",
    "asf",
    "wv",
    "ape",
    "tta",
    "au",
    "amr",
    "mpc",
    "mpc8",
    "dts",
)

# Shorter than this after decoding counts as "decodes to nothing" (one 20 ms Opus frame).
MIN_AUDIO_MS = 20
# A header that promises more than this much audio beyond what decodes means a truncated file.
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_RATIO = 0.05

_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
)


class InvalidAudioError(InvalidInput):
    """The file is not usable audio; ``reason`` says why in words meant for a user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What a full decode of the first audio stream found."""

    duration_ms: int  # decoded duration
    sample_rate: int
    channels: int
    codec: str | None  # ffmpeg decoder name, e.g. "mp3", "opus", "pcm_s16le"
    container: str | None  # ffmpeg demuxer name, e.g. "mp3", "ogg", "mov,mp4,m4a,3gp,3g2,mj2"
    channel_layout: str | None = None  # e.g. "mono", "stereo", "5.1(side)"
    declared_duration_ms: int | None = None  # what the container header claims, if it does


# --------------------------------------------------------------------------------------------
# Plain file facts.


def hash_open_file(fh: BinaryIO) -> str:
    """SHA-256 (lowercase hex) of the rest of an open binary file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    while chunk := fh.read(HASH_CHUNK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()


def get_file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes as lowercase hex, streamed in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return hash_open_file(fh)


async def get_file_hash_async(path: str | os.PathLike[str]) -> str:
    return await asyncio.to_thread(get_file_hash, path)


def get_file_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes (raises ``FileNotFoundError`` for a missing file)."""
    return os.stat(path).st_size


# --------------------------------------------------------------------------------------------
# Durations.


def _mutagen_duration_ms(path: Path) -> int | None:
    """Duration from the file's headers via mutagen, or None when mutagen can't tell reliably."""
    try:
        import mutagen
        from mutagen.flac import FLAC
        from mutagen.mp3 import MP3, BitrateMode
        from mutagen.mp4 import MP4
        from mutagen.oggopus import OggOpus
        from mutagen.oggvorbis import OggVorbis
        from mutagen.wave import WAVE

        parsed = mutagen.File(path, options=[MP3, OggOpus, OggVorbis, FLAC, WAVE, MP4])
    except Exception as exc:  # mutagen raises many kinds of errors on junk input
        logger.debug("mutagen could not read %s: %s", path, exc)
        return None
    if parsed is None or parsed.info is None:
        return None
    info = parsed.info
    if isinstance(parsed, MP3) and (
        info.bitrate_mode == BitrateMode.UNKNOWN or getattr(info, "sketchy", False)
    ):
        # No Xing/VBRI/LAME header: mutagen extrapolates from the first frame's bitrate, which
        # is wrong for VBR files. Decode instead.
        return None
    if getattr(info, "channels", 1) <= 0 or getattr(info, "sample_rate", 1) <= 0:
        return None  # e.g. an MP4 with only a video track: mutagen reports the movie's length
    length = getattr(info, "length", None)
    if not isinstance(length, int | float) or length <= 0:
        return None
    return round(length * 1000)


def get_declared_duration(path: str | os.PathLike[str]) -> int | None:
    """Duration in milliseconds as the file's headers state it (mutagen; nothing is decoded),
    or None when the format is not one mutagen reads reliably. Cheap enough to reject overlong
    uploads before decoding them; a truncated file still declares its full length."""
    return _mutagen_duration_ms(Path(path))


def get_audio_duration(
    path: str | os.PathLike[str], *, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> int:
    """Duration in milliseconds.

    Read from the headers with mutagen for mp3 (with a Xing/LAME/VBRI header), Ogg Opus/Vorbis,
    FLAC, WAV and MP4/M4A; anything else is decoded with ffmpeg (see :func:`probe_audio`, whose
    :class:`InvalidAudioError` this raises for files that are not audio).
    """
    p = Path(path)
    from_headers = _mutagen_duration_ms(p)
    if from_headers is not None:
        return from_headers
    return probe_audio(p, timeout=timeout).duration_ms


async def get_audio_duration_async(
    path: str | os.PathLike[str], *, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> int:
    p = Path(path)
    from_headers = await asyncio.to_thread(_mutagen_duration_ms, p)
    if from_headers is not None:
        return from_headers
    return (await probe_audio_async(p, timeout=timeout)).duration_ms


# --------------------------------------------------------------------------------------------
# Probing.


def check_audio_file(path: Path) -> None:
    """Cheap checks before spawning ffmpeg: exists, regular, not empty, not an image.

    Raises :class:`InvalidAudioError`.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidAudioError("file not found") from None
    except OSError as exc:
        raise InvalidAudioError(f"file cannot be read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise InvalidAudioError("not a regular file")
    if st.st_size == 0:
        raise InvalidAudioError("file is empty (0 bytes)")
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InvalidAudioError(f"file cannot be read ({exc.strerror or exc})") from None
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            raise InvalidAudioError(f"not an audio file: it is {what}, with no audio stream")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise InvalidAudioError("not an audio file: it is a WebP image, with no audio stream")


def ffmpeg_input(path: Path) -> str:
    """``path`` as an ffmpeg input/output URL that can't be mistaken for an option or protocol."""
    return "file:" + str(path.absolute())


def decode_input_args(path: Path) -> list[str]:
    """Input options for decoding untrusted ``path`` (local files, audio demuxers only)."""
    return [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(ACCEPTED_INPUT_FORMATS),
        "-i",
        ffmpeg_input(path),
    ]


def _probe_args(path: Path) -> list[str]:
    return [
        *base_args("level+verbose"),
        "-threads",
        "1",
        *decode_input_args(path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-f",
        "null",
        "-",
    ]


_LEVEL_RE = re.compile(r"(?:^|\] )\[(error|fatal|panic)\] (.*)$")
_INPUT_RE = re.compile(r"Input #0, (.+?), from '")
_DURATION_RE = re.compile(r"^\s*Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: (Audio|Video|Subtitle|Data|Attachment): (.*)$")
_DECODED_RE = re.compile(
    r"Input stream #0:\d+ \(audio\):.*?(\d+) frames decoded"
    r"(?:; (\d+) decode errors)? \((\d+) samples\)"
)
_TIME_RE = re.compile(r"time=(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")

_LAYOUT_CHANNELS: Mapping[str, int] = MappingProxyType(
    {
        "mono": 1,
        "stereo": 2,
        "downmix": 2,
        "2.1": 3,
        "3.0": 3,
        "3.0(back)": 3,
        "4.0": 4,
        "quad": 4,
        "quad(side)": 4,
        "3.1": 4,
        "5.0": 5,
        "5.0(side)": 5,
        "4.1": 5,
        "5.1": 6,
        "5.1(side)": 6,
        "6.0": 6,
        "6.0(front)": 6,
        "hexagonal": 6,
        "6.1": 7,
        "6.1(back)": 7,
        "6.1(front)": 7,
        "7.0": 7,
        "7.0(front)": 7,
        "7.1": 8,
        "7.1(wide)": 8,
        "7.1(wide-side)": 8,
        "octagonal": 8,
    }
)


def _hms(hours: str, minutes: str, seconds: str) -> float:
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _channels_of(layout: str) -> int:
    if layout in _LAYOUT_CHANNELS:
        return _LAYOUT_CHANNELS[layout]
    counted = re.match(r"(\d+) channels", layout)
    return int(counted.group(1)) if counted else 0


@dataclass
class _Streams:
    container: str | None = None
    declared_s: float | None = None
    audio: str | None = None  # the detail text of the first audio stream
    other_kinds: tuple[str, ...] = ()


def _parse_input_section(stderr: str) -> _Streams:
    """Stream facts from ffmpeg's dump of input #0 (ignoring the output's dump)."""
    found = _Streams()
    kinds: list[str] = []
    inside = False
    for raw in stderr.splitlines():
        line = raw.removeprefix("[info] ")
        header = _INPUT_RE.search(line)
        if header:
            inside = True
            found.container = header.group(1)
            continue
        if not inside:
            continue
        if line.startswith(("Stream mapping:", "Output #")):
            break
        if line.startswith("["):  # a log line from elsewhere, not part of the dump
            continue
        duration = _DURATION_RE.match(line)
        if duration:
            found.declared_s = _hms(*duration.groups())
            continue
        stream = _STREAM_RE.match(line)
        if stream:
            kind, detail = stream.groups()
            if kind == "Audio" and found.audio is None:
                found.audio = detail
            elif kind != "Audio":
                kinds.append(kind.lower())
    found.other_kinds = tuple(dict.fromkeys(kinds))
    return found


def _error_lines(stderr: str) -> list[str]:
    errors = []
    for line in stderr.splitlines():
        match = _LEVEL_RE.search(line)
        if match:
            errors.append(match.group(2).strip())
    return errors


def _first_meaningful_error(errors: list[str]) -> str:
    for message in errors:
        if not message.startswith(("Error opening input file", "Error opening input files")):
            return message
    return errors[0] if errors else "unknown error"


def interpret_decode(result: FFmpegResult) -> AudioInfo:
    """Turn a full ``-loglevel level+verbose`` decode of input #0's first audio stream into an
    :class:`AudioInfo`, or raise :class:`InvalidAudioError` explaining what is wrong."""
    stderr = result.stderr
    errors = _error_lines(stderr)
    streams = _parse_input_section(stderr)

    if result.returncode != 0:
        joined = "\n".join(errors)
        if "No such file or directory" in joined:
            raise InvalidAudioError("file not found")
        if "Format not on whitelist" in joined:
            raise InvalidAudioError("unsupported file format (not an accepted audio format)")
        if streams.container is not None and streams.audio is None:
            if streams.other_kinds:
                kinds = "/".join(streams.other_kinds)
                raise InvalidAudioError(f"no audio stream in the file (it only has {kinds})")
            raise InvalidAudioError("no audio stream in the file")
        if streams.container is None:
            raise InvalidAudioError(
                "not a recognised audio file (ffmpeg: "
                f"{_first_meaningful_error(errors).rstrip('.')})"
            )
        raise InvalidAudioError(f"audio cannot be decoded ({_first_meaningful_error(errors)})")

    if streams.audio is None:
        raise InvalidAudioError("no audio stream in the file")
    detail = streams.audio
    codec = detail.split(" ", 1)[0].rstrip(",") or None
    rate_match = re.search(r"(\d+) Hz", detail)
    sample_rate = int(rate_match.group(1)) if rate_match else 0
    layout_match = re.search(r"\d+ Hz, ([^,]+)", detail)
    layout = layout_match.group(1).strip() if layout_match else None
    channels = _channels_of(layout) if layout else 0

    decoded = _DECODED_RE.search(stderr)
    decode_errors = int(decoded.group(2) or 0) if decoded else 0
    if decoded and sample_rate > 0:
        decoded_s = int(decoded.group(3)) / sample_rate
    else:  # older ffmpeg: fall back to the last progress time
        times = _TIME_RE.findall(stderr)
        decoded_s = _hms(*times[-1]) if times else 0.0

    if decode_errors or errors:
        count = f"{decode_errors} decode error{'s' if decode_errors != 1 else ''}"
        first = _first_meaningful_error(errors) if errors else "no details"
        raise InvalidAudioError(
            f"audio data is corrupt ({count if decode_errors else 'errors while decoding'}; "
            f"first: {first})"
        )
    if decoded_s * 1000 < MIN_AUDIO_MS:
        raise InvalidAudioError(
            f"file decodes to no audio ({decoded_s * 1000:.0f} ms), it is probably truncated"
        )
    declared = streams.declared_s
    estimated = "Estimating duration from bitrate" in stderr
    if declared is not None and not estimated:
        tolerance = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_RATIO * declared)
        if declared - decoded_s > tolerance:
            raise InvalidAudioError(
                f"file is truncated: its header promises {declared:.1f} s of audio but only "
                f"{decoded_s:.1f} s can be decoded"
            )
    return AudioInfo(
        duration_ms=round(decoded_s * 1000),
        sample_rate=sample_rate,
        channels=channels,
        codec=codec,
        container=streams.container,
        channel_layout=layout,
        declared_duration_ms=round(declared * 1000) if declared is not None else None,
    )


def _timeout_reason(exc: FFmpegTimeoutError) -> InvalidAudioError:
    return InvalidAudioError(f"decoding the file took too long ({exc})")


def probe_audio(
    path: str | os.PathLike[str], *, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> AudioInfo:
    """Decode the whole first audio stream of ``path`` and describe it.

    Raises :class:`InvalidAudioError` (never anything else for bad *input*) when the file is
    missing, empty, not audio (text, images, unsupported formats), has no audio stream, hits
    decoder errors, decodes to nothing, or is shorter than its header says (truncated).
    :class:`~core.ffmpeg.FFmpegError` is raised only when ffmpeg itself cannot be run.
    """
    p = Path(path)
    check_audio_file(p)
    try:
        result = run_ffmpeg_sync(_probe_args(p), timeout=timeout)
    except FFmpegTimeoutError as exc:
        raise _timeout_reason(exc) from exc
    return interpret_decode(result)


async def probe_audio_async(
    path: str | os.PathLike[str], *, timeout: float = DEFAULT_PROBE_TIMEOUT
) -> AudioInfo:
    """``async`` twin of :func:`probe_audio` (the decode runs in an ffmpeg child process)."""
    p = Path(path)
    await asyncio.to_thread(check_audio_file, p)
    try:
        result = await run_ffmpeg(_probe_args(p), timeout=timeout)
    except FFmpegTimeoutError as exc:
        raise _timeout_reason(exc) from exc
    return interpret_decode(result)
