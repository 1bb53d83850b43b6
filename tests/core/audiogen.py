"""Test helpers: generate real audio with ffmpeg's lavfi sources and meter it independently.

Everything here shells out to the same ffmpeg binary the application uses, but the loudness
meter below is written separately from ``core.normalize`` on purpose: it runs ffmpeg's
``ebur128`` filter on the finished file and parses its summary itself, so a bug in the
implementation's measurement or parsing cannot hide a bad output.
"""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.ffmpeg import ffmpeg_binary

__all__ = [
    "AUDIO_CASES",
    "INVALID_CASES",
    "Loudness",
    "OpusStreamInfo",
    "clipped",
    "corpus",
    "encode",
    "image",
    "isp_bursts",
    "loud_music",
    "meter",
    "opus_stream_info",
    "peaky",
    "render",
    "repeat",
    "set_loudness",
    "silence",
    "speech",
    "video",
]

# A voiced "syllable" train: a 150 Hz fundamental with a few harmonics and some breath noise,
# amplitude modulated at 4 Hz, talking for 1.0 s out of every 1.5 s (so there are pauses).
_SPEECH_EXPR = (
    "(sin(2*PI*150*t)+0.5*sin(2*PI*300*t)+0.35*sin(2*PI*450*t)+0.2*sin(2*PI*900*t)"
    "+0.15*sin(2*PI*2400*t)+0.3*(random(0)-0.5))"
    "*0.25*(0.55+0.45*sin(2*PI*4*t))*lt(mod(t\\,1.5)\\,1.0)"
)

# An A major chord with an octave and a little noise; every note is struck each 0.5 s.
_CHORD_EXPR = (
    "(sin(2*PI*220*t)+sin(2*PI*277.18*t)+sin(2*PI*329.63*t)+0.7*sin(2*PI*440*t)"
    "+0.5*sin(2*PI*110*t)+0.4*(random(0)-0.5))*0.3*(0.6+0.4*exp(-6*mod(t\\,0.5)))"
)


def _run(args: list[str]) -> str:
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return proc.stderr


def _codec_args(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    return {
        ".wav": ["-c:a", "pcm_s16le"],
        ".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
        ".flac": ["-c:a", "flac"],
        ".ogg": ["-c:a", "libvorbis", "-q:a", "5"],
        ".opus": ["-c:a", "libopus", "-b:a", "96k"],
        ".m4a": ["-c:a", "aac", "-b:a", "160k"],
    }[suffix]


def render(
    dst: Path,
    graph: str,
    *,
    seconds: float,
    rate: int = 44100,
    channels: int = 2,
    extra: list[str] | None = None,
) -> Path:
    """Render a lavfi ``graph`` (one audio output) to ``dst``; the codec follows the suffix."""
    layout = "mono" if channels == 1 else "stereo"
    full = f"{graph},atrim=duration={seconds},aformat=channel_layouts={layout}"
    _run(
        [
            "-f",
            "lavfi",
            "-i",
            full,
            "-ar",
            str(rate),
            "-ac",
            str(channels),
            *(extra or []),
            *_codec_args(dst),
            str(dst),
        ]
    )
    return dst


def speech(
    dst: Path, *, seconds: float = 4.0, rate: int = 44100, channels: int = 1, gain_db: float = 0.0
) -> Path:
    """Speech-like audio: harmonic "voice" bursts with pauses (about -19 LUFS at 0 dB gain)."""
    graph = f"aevalsrc='{_SPEECH_EXPR}':s={rate}:d={seconds + 1},volume={gain_db}dB"
    return render(dst, graph, seconds=seconds, rate=rate, channels=channels)


def loud_music(dst: Path, *, seconds: float = 4.0, rate: int = 44100, channels: int = 2) -> Path:
    """A compressed, limited chord that sits right under 0 dBFS (very loud, low crest)."""
    graph = (
        f"aevalsrc='{_CHORD_EXPR}|{_CHORD_EXPR.replace('random(0)', 'random(1)')}'"
        f":s={rate}:d={seconds + 1},"
        "acompressor=threshold=0.05:ratio=8:attack=5:release=50:makeup=8,"
        "alimiter=limit=0.97:level=disabled:attack=1:release=20"
    )
    return render(dst, graph, seconds=seconds, rate=rate, channels=channels)


def clipped(dst: Path, *, seconds: float = 3.0, rate: int = 44100) -> Path:
    """A 440 Hz sine amplified 24 dB past full scale and hard clipped by the 16-bit encode."""
    graph = f"sine=frequency=440:sample_rate={rate}:duration={seconds + 1},volume=24dB"
    return render(dst, graph, seconds=seconds, rate=rate, channels=2)


def silence(dst: Path, *, seconds: float = 3.0, rate: int = 44100, channels: int = 2) -> Path:
    """Digital silence."""
    layout = "mono" if channels == 1 else "stereo"
    graph = f"anullsrc=r={rate}:cl={layout}"
    return render(dst, graph, seconds=seconds, rate=rate, channels=channels)


def peaky(dst: Path, *, seconds: float = 4.0, rate: int = 44100) -> Path:
    """Quiet speech with loud clicks: a peak-to-loudness ratio far above 21 dB.

    Bringing this to -23 LUFS with a plain gain would push its true peak to about +10 dBTP,
    so a normalizer has to limit it (loudnorm's dynamic mode) rather than just add gain.
    """
    click = "0.95*sin(2*PI*3000*t)*lt(mod(t\\,0.7)\\,0.0006)"
    expr = f"{_SPEECH_EXPR}*0.3+{click}"
    graph = f"aevalsrc='{expr}':s={rate}:d={seconds + 1}"
    return render(dst, graph, seconds=seconds, rate=rate, channels=2)


def isp_bursts(dst: Path, *, burst: float, voice: float, seconds: float = 4.0) -> Path:
    """Speech plus a 1 ms burst each second of an 11025 Hz tone at 45 degrees of phase.

    At 44.1 kHz every sample of that tone lands at 0.707 of its crest, so the true peak is
    about 2.5-3 dB above the sample peak (inter-sample peaks). ``burst=0.6, voice=0.3`` gives a
    sample peak that looks fine for -23 LUFS but a true peak that is not (peak-to-loudness ratio
    about 19 dB by samples, 21.7 dB true); ``burst=0.6, voice=0.5`` fits either way (16 / 18.6).
    """
    tone = f"{burst}*sin(2*PI*11025*t+PI/4)*lt(mod(t\\,1)\\,0.001)"
    graph = f"aevalsrc='{_SPEECH_EXPR}*{voice}+{tone}':s=44100:d={seconds + 1}"
    return render(dst, graph, seconds=seconds, rate=44100, channels=2)


def image(dst: Path) -> Path:
    """A small still image (PNG or JPEG by suffix): a video stream, no audio."""
    _run(["-f", "lavfi", "-i", "testsrc=size=64x64:rate=1", "-frames:v", "1", str(dst)])
    return dst


def video(dst: Path, *, with_audio: bool, seconds: float = 2.0) -> Path:
    """An MP4 with an MPEG-4 video stream and, optionally, a 440 Hz AAC audio track."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size=64x64:rate=10:duration={seconds}"]
    if with_audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
        codecs = ["-c:v", "mpeg4", "-c:a", "aac", "-shortest"]
    else:
        codecs = ["-c:v", "mpeg4"]
    _run([*inputs, *codecs, str(dst)])
    return dst


def repeat(src: Path, dst: Path, *, times: int) -> Path:
    """``src`` played ``times`` times in a row, encoded to ``dst`` (cheap long inputs)."""
    _run(["-stream_loop", str(times - 1), "-i", str(src), *_codec_args(dst), str(dst)])
    return dst


def encode(src: Path, dst: Path, *, extra: list[str] | None = None) -> Path:
    """Re-encode ``src`` to ``dst`` with the codec matching ``dst``'s suffix."""
    _run(["-i", str(src), *(extra or []), *_codec_args(dst), str(dst)])
    return dst


def set_loudness(src: Path, dst: Path, lufs: float) -> Path:
    """Write ``src`` to ``dst`` with a linear gain so that ``dst`` measures ``lufs``."""
    gain = lufs - meter(src).integrated
    _run(["-i", str(src), "-af", f"volume={gain:.3f}dB", *_codec_args(dst), str(dst)])
    return dst


# ---------------------------------------------------------------------------------------------
# The independent meter.


@dataclass(frozen=True)
class Loudness:
    integrated: float  # LUFS; -70.0 (or -inf) for silence
    true_peak: float  # dBTP, the maximum over channels; -inf for silence
    lra: float  # LU


_SUMMARY_VALUE = r"\s*(-?inf|nan|-?\d+(?:\.\d+)?)"


def _summary_number(summary: str, label: str) -> float:
    found = re.search(rf"^\s*{label}:{_SUMMARY_VALUE}", summary, re.MULTILINE)
    if found is None:
        raise AssertionError(f"no {label!r} in ebur128 summary:\n{summary}")
    return float(found.group(1))


def meter(path: Path) -> Loudness:
    """EBU R128 integrated loudness / true peak / LRA of ``path`` as is (no remixing)."""
    stderr = _run(
        [
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-af",
            "ebur128=peak=true:framelog=quiet",
            "-f",
            "null",
            "-",
        ]
    )
    _, sep, summary = stderr.rpartition("Summary:")
    assert sep, f"ebur128 printed no summary:\n{stderr}"
    integrated_part, _, rest = summary.partition("Loudness range:")
    range_part, _, peak_part = rest.partition("True peak:")
    return Loudness(
        integrated=_summary_number(integrated_part, "I"),
        true_peak=_summary_number(peak_part, "Peak"),
        lra=_summary_number(range_part, "LRA"),
    )


# ---------------------------------------------------------------------------------------------
# Ogg Opus structure checks (RFC 7845 / RFC 6716), independent of mutagen.

# Frame duration in microseconds for each TOC "config" value (RFC 6716, section 3.1).
_SILK_US = (10_000, 20_000, 40_000, 60_000)
_HYBRID_US = (10_000, 20_000)
_CELT_US = (2_500, 5_000, 10_000, 20_000)


def _config_frame_us(config: int) -> int:
    if config < 12:
        return _SILK_US[config % 4]
    if config < 16:
        return _HYBRID_US[config % 2]
    return _CELT_US[config % 4]


def _packet_duration_us(packet: bytes) -> int:
    toc = packet[0]
    frame_us = _config_frame_us(toc >> 3)
    code = toc & 0x3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F
    return frame_us * frames


@dataclass(frozen=True)
class OpusStreamInfo:
    channels: int
    input_sample_rate: int
    pre_skip: int
    packet_durations_us: frozenset[int]
    audio_packets: int
    duration_s: float  # from the final granule position


def opus_stream_info(path: Path) -> OpusStreamInfo:
    """Parse an Ogg Opus file with discord.py's own Ogg reader (what the bot streams from)."""
    from discord.oggparse import OggStream

    with path.open("rb") as fh:
        packets = list(OggStream(fh).iter_packets())
    assert len(packets) >= 3, "an Ogg Opus stream needs OpusHead, OpusTags and audio"
    head, tags, audio = packets[0], packets[1], packets[2:]
    assert head[:8] == b"OpusHead", head[:8]
    assert tags[:8] == b"OpusTags", tags[:8]
    _version, channels, pre_skip, rate = struct.unpack_from("<BBHI", head, 8)
    durations = frozenset(_packet_duration_us(p) for p in audio)

    raw = path.read_bytes()
    last_page = raw.rfind(b"OggS")
    (granule,) = struct.unpack_from("<q", raw, last_page + 6)
    duration = max(0, granule - pre_skip) / 48_000
    return OpusStreamInfo(
        channels=channels,
        input_sample_rate=rate,
        pre_skip=pre_skip,
        packet_durations_us=durations,
        audio_packets=len(audio),
        duration_s=duration,
    )


# ---------------------------------------------------------------------------------------------
# The shared test corpus.

# Inputs that normalize to -23 LUFS, by name.
AUDIO_CASES = (
    "speech",
    "loud_music",
    "quiet",
    "clipped",
    "mono_8k",
    "stereo_96k",
    "short_1s",
    "peaky",
    "peaky_1s",
    "isp_over",
    "isp_fits",
    "vorbis",
    "opus",
    "m4a",
    "video_with_audio",
)

# Inputs that are not valid audio, with a word their rejection reason must contain.
INVALID_CASES = {
    "empty": "empty",
    "missing": "not found",
    "directory": "not a regular file",
    "text": "not a recognised audio file",
    "png": "PNG image",
    "png_as_mp3": "PNG image",
    "jpeg": "JPEG image",
    "video_only": "no audio stream",
    "truncated": "truncated",
    "corrupt_middle": "corrupt",
    "playlist": "not a recognised audio file",
}


def _build(folder: Path) -> dict[str, Path]:
    f = folder
    c: dict[str, Path] = {}
    c["speech"] = speech(f / "speech.mp3")
    c["loud_music"] = loud_music(f / "loud_music.flac")
    c["quiet"] = set_loudness(speech(f / "quiet_src.wav"), f / "quiet.wav", -45.0)
    c["clipped"] = clipped(f / "clipped.wav")
    c["mono_8k"] = speech(f / "mono_8k.wav", rate=8000)
    c["stereo_96k"] = loud_music(f / "stereo_96k.flac", rate=96000)
    c["short_1s"] = speech(f / "short_1s.mp3", seconds=1.0)
    c["peaky"] = peaky(f / "peaky.wav")
    c["peaky_1s"] = peaky(f / "peaky_1s.wav", seconds=1.0)
    c["isp_over"] = isp_bursts(f / "isp_over.wav", burst=0.6, voice=0.3)
    c["isp_fits"] = isp_bursts(f / "isp_fits.wav", burst=0.6, voice=0.5)
    c["vorbis"] = speech(f / "vorbis.ogg", channels=2)
    c["opus"] = speech(f / "opus.opus", rate=48000)
    c["m4a"] = loud_music(f / "music.m4a")
    c["video_with_audio"] = video(f / "video_with_audio.mp4", with_audio=True)
    c["silence"] = silence(f / "silence.wav")
    c["blip"] = speech(f / "blip.wav", seconds=0.25, channels=2)
    c["wav"] = speech(f / "speech.wav")
    c["flac"] = speech(f / "speech.flac")
    c["mp3_no_header"] = render(
        f / "no_header.mp3",
        "sine=frequency=330:sample_rate=44100:duration=5",
        seconds=4.0,
        extra=["-write_xing", "0", "-q:a", "4"],
    )

    # Not audio.
    (f / "empty.mp3").write_bytes(b"")
    c["empty"] = f / "empty.mp3"
    c["missing"] = f / "no-such-file.mp3"
    c["directory"] = f / "a-directory.mp3"
    c["directory"].mkdir(exist_ok=True)
    c["text"] = f / "notes.mp3"
    c["text"].write_text("These are my notes, not a song.\n" * 20)
    c["png"] = image(f / "image.png")
    c["png_as_mp3"] = f / "image.mp3"
    c["png_as_mp3"].write_bytes(c["png"].read_bytes())
    c["jpeg"] = image(f / "photo.jpg")
    c["video_only"] = video(f / "video_only.mp4", with_audio=False)
    long_mp3 = speech(f / "six_seconds.mp3", seconds=6.0, channels=2)
    data = long_mp3.read_bytes()
    c["truncated"] = f / "truncated.mp3"
    c["truncated"].write_bytes(data[: len(data) * 4 // 10])
    # 4 KiB of noise in the middle of the frames: the decoder loses sync and reports errors.
    corrupt = bytearray(data)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 4096] = bytes((i * 7919 + 13) % 251 for i in range(4096))
    c["corrupt_middle"] = f / "corrupt_middle.mp3"
    c["corrupt_middle"].write_bytes(bytes(corrupt))
    c["playlist"] = f / "playlist.mp3"
    c["playlist"].write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n"
    )
    return c


def corpus(folder: Path) -> dict[str, Path]:
    """Generate (once per ``folder``) every test input, keyed by case name."""
    done = folder / ".complete"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        files = _build(folder)
        done.write_text("\n".join(f"{k}={v.name}" for k, v in files.items()))
    return {
        key: folder / name
        for key, name in (line.split("=", 1) for line in done.read_text().splitlines())
    }
