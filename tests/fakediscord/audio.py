"""Audio helpers: Ogg Opus files, an Opus ``AudioSource``, PyAV decoding and FFT analysis.

Nothing here needs a system libopus: decoding uses PyAV's bundled FFmpeg Opus
decoder and encoding uses the ffmpeg binary shipped by ``imageio-ffmpeg``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import discord
import numpy as np
import numpy.typing as npt
from discord.oggparse import OggStream

from ._util import OPUS_SILENCE

if TYPE_CHECKING:
    from .voice import RtpPacket

_log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
CHANNELS = 2
SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz
SILENCE_FRAMES_AT_END = 5


def is_silence_frame(payload: bytes) -> bool:
    return payload == OPUS_SILENCE


def is_ogg_header_packet(payload: bytes) -> bool:
    """``OpusHead``/``OpusTags`` Ogg header packets (``FFmpegOpusAudio`` forwards them)."""
    return payload.startswith((b"OpusHead", b"OpusTags"))


def audio_frames(packets: Iterable[RtpPacket | bytes]) -> list[bytes]:
    """Opus payloads minus silence frames and Ogg header packets."""
    out: list[bytes] = []
    for p in packets:
        payload = p if isinstance(p, bytes) else p.payload
        if is_silence_frame(payload) or is_ogg_header_packet(payload):
            continue
        out.append(payload)
    return out


def split_playbacks(packets: Sequence[RtpPacket]) -> list[list[RtpPacket]]:
    """Split a packet stream into playbacks, each ending with five silence frames.

    A trailing run that has not (yet) ended with five silence frames is returned as
    the last element too.
    """
    playbacks: list[list[RtpPacket]] = []
    current: list[RtpPacket] = []
    silence_run = 0
    for p in packets:
        current.append(p)
        if is_silence_frame(p.payload):
            silence_run += 1
            if silence_run == SILENCE_FRAMES_AT_END:
                playbacks.append(current)
                current = []
                silence_run = 0
        else:
            silence_run = 0
    if current:
        playbacks.append(current)
    return playbacks


def decode_opus_to_pcm(frames: Iterable[bytes | RtpPacket]) -> npt.NDArray[np.int16]:
    """Decode Opus frames to 48 kHz stereo PCM, shape ``(samples, 2)``, dtype int16.

    Accepts payload bytes or :class:`RtpPacket` objects. Silence frames and Ogg header
    packets are skipped. Uses PyAV's Opus decoder
    (one ``av.Packet`` per frame), never ``discord.opus``.
    """
    import av

    ctx = av.CodecContext.create("opus", "r")
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "stereo"
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
    chunks: list[npt.NDArray[np.int16]] = []

    def _collect(decoded: Iterable[av.AudioFrame] | None) -> None:
        if decoded is None:
            return
        for frame in decoded:
            for out in resampler.resample(frame):
                chunks.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))

    for payload in audio_frames(frames):
        try:
            _collect(ctx.decode(av.Packet(payload)))
        except av.error.FFmpegError:
            _log.warning("could not decode an Opus frame of %d bytes", len(payload))
    _collect(ctx.decode(None))
    for out in resampler.resample(None):
        chunks.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))
    if not chunks:
        return np.zeros((0, CHANNELS), dtype=np.int16)
    return np.concatenate(chunks).astype(np.int16).reshape(-1, CHANNELS)


def dominant_frequency(pcm: npt.NDArray[np.generic], sample_rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency (Hz) of ``pcm`` (mono, or ``(samples, channels)``)."""
    data = np.asarray(pcm, dtype=np.float64)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size < 2:
        raise ValueError("need at least two samples")
    data = data - data.mean()
    spectrum = np.abs(np.fft.rfft(data * np.hanning(data.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    # Parabolic interpolation around the peak for sub-bin precision.
    offset = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        if denom != 0:
            offset = 0.5 * (a - c) / denom
    return float((k + offset) * sample_rate / data.size)


def rms(pcm: npt.NDArray[np.generic]) -> float:
    data = np.asarray(pcm, dtype=np.float64)
    return float(np.sqrt(np.mean(data**2))) if data.size else 0.0


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def make_sine_ogg(
    path: Path | str, frequency: float = 440.0, duration: float = 1.0, bitrate: str = "96k"
) -> Path:
    """Encode a sine tone as 48 kHz stereo Ogg Opus with the bundled ffmpeg (blocking)."""
    path = Path(path)
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={frequency}:duration={duration}",
        "-c:a",
        "libopus",
        "-b:a",
        bitrate,
        "-ar",
        str(SAMPLE_RATE),
        "-ac",
        str(CHANNELS),
        str(path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def read_ogg_opus_packets(path: Path | str) -> list[bytes]:
    """The Opus packets of an Ogg Opus file, without ``OpusHead``/``OpusTags``."""
    with open(path, "rb") as f:
        return [p for p in OggStream(f).iter_packets() if not is_ogg_header_packet(p)]


class OggOpusSource(discord.AudioSource):
    """A ``discord.AudioSource`` yielding ready Opus packets (``is_opus()`` is True).

    discord.py then never needs libopus to play it. Accepts an Ogg Opus file or a
    list of Opus packets.
    """

    def __init__(self, path_or_packets: Path | str | Sequence[bytes]) -> None:
        if isinstance(path_or_packets, (str, Path)):
            self._packets = read_ogg_opus_packets(path_or_packets)
        else:
            self._packets = list(path_or_packets)
        self._index = 0

    def read(self) -> bytes:
        if self._index >= len(self._packets):
            return b""
        packet = self._packets[self._index]
        self._index += 1
        return packet

    def is_opus(self) -> bool:
        return True

    @property
    def packet_count(self) -> int:
        return len(self._packets)
