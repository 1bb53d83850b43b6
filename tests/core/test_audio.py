"""core.audio and core.ffmpeg against real ffmpeg on generated files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from core import ffmpeg as ff
from core.audio import (
    AudioInfo,
    InvalidAudioError,
    get_audio_duration,
    get_audio_duration_async,
    get_declared_duration,
    get_file_hash,
    get_file_hash_async,
    get_file_size,
    probe_audio,
    probe_audio_async,
)
from core.errors import InvalidInput
from tests.core import audiogen


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return audiogen.corpus(tmp_path_factory.getbasetemp() / "audio-corpus")


@pytest.fixture
def fresh_binary_cache():
    ff.clear_ffmpeg_binary_cache()
    yield
    ff.clear_ffmpeg_binary_cache()


def _children_of_this_process() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        children = (task / "children").read_text().split()
        pids.update(int(pid) for pid in children)
    return pids


# --- hashing and sizes ------------------------------------------------------------------------


def test_hash_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)  # spans four 1 MiB reads
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert get_file_hash(path) == hashlib.sha256(data).hexdigest()
    assert get_file_size(path) == len(data)


def test_hash_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert get_file_hash(path) == hashlib.sha256(b"").hexdigest()
    assert get_file_size(path) == 0


async def test_hash_async_equals_sync(corpus: dict[str, Path]) -> None:
    path = corpus["loud_music"]
    assert await get_file_hash_async(path) == get_file_hash(path)
    assert len(get_file_hash(path)) == 64


def test_hash_and_size_of_missing_file_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        get_file_hash(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        get_file_size(tmp_path / "nope")


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected_ms"),
    [
        ("speech", 4000),  # mp3 with a LAME header (mutagen)
        ("wav", 4000),
        ("flac", 4000),
        ("vorbis", 4000),
        ("opus", 4000),
        ("m4a", 4000),
        ("mono_8k", 4000),
        ("short_1s", 1000),
        ("blip", 250),
        ("mp3_no_header", 4000),  # VBR without Xing header: decoded with ffmpeg instead
        ("video_with_audio", 2000),
    ],
)
def test_duration(corpus: dict[str, Path], case: str, expected_ms: int) -> None:
    # mp3 and AAC carry encoder delay/padding, hence the tolerance of a couple of frames.
    assert abs(get_audio_duration(corpus[case]) - expected_ms) <= 60


def test_declared_duration_reads_headers_only(corpus: dict[str, Path]) -> None:
    assert abs((get_declared_duration(corpus["flac"]) or 0) - 4000) <= 1
    assert abs((get_declared_duration(corpus["truncated"]) or 0) - 6000) <= 60  # as promised
    assert get_declared_duration(corpus["mp3_no_header"]) is None  # would need a decode
    assert get_declared_duration(corpus["video_only"]) is None
    assert get_declared_duration(corpus["text"]) is None
    assert get_declared_duration(corpus["missing"]) is None


async def test_duration_async(corpus: dict[str, Path]) -> None:
    assert abs(await get_audio_duration_async(corpus["speech"]) - 4000) <= 60
    assert abs(await get_audio_duration_async(corpus["mp3_no_header"]) - 4000) <= 60


@pytest.mark.parametrize("case", ["text", "video_only", "empty", "missing"])
def test_duration_of_non_audio_raises_invalid_audio(corpus: dict[str, Path], case: str) -> None:
    with pytest.raises(InvalidAudioError):
        get_audio_duration(corpus[case])


# --- probing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "rate", "channels", "codec", "duration_ms"),
    [
        ("speech", 44100, 1, "mp3", 4000),
        ("loud_music", 44100, 2, "flac", 4000),
        ("mono_8k", 8000, 1, "pcm_s16le", 4000),
        ("stereo_96k", 96000, 2, "flac", 4000),
        ("vorbis", 44100, 2, "vorbis", 4000),
        ("opus", 48000, 1, "opus", 4000),
        ("m4a", 44100, 2, "aac", 4000),
        ("video_with_audio", 44100, 1, "aac", 2000),
        ("blip", 44100, 2, "pcm_s16le", 250),
        ("silence", 44100, 2, "pcm_s16le", 3000),
    ],
)
def test_probe_describes_audio(
    corpus: dict[str, Path], case: str, rate: int, channels: int, codec: str, duration_ms: int
) -> None:
    info = probe_audio(corpus[case])
    assert isinstance(info, AudioInfo)
    assert info.sample_rate == rate
    assert info.channels == channels
    assert info.codec == codec
    assert abs(info.duration_ms - duration_ms) <= 30  # decoded, so exact to a frame
    assert info.container


@pytest.mark.parametrize("case", sorted(audiogen.INVALID_CASES))
def test_probe_rejects_with_reason(corpus: dict[str, Path], case: str) -> None:
    with pytest.raises(InvalidAudioError) as caught:
        probe_audio(corpus[case])
    assert audiogen.INVALID_CASES[case] in caught.value.reason
    assert str(caught.value) == caught.value.reason


@pytest.mark.parametrize("case", sorted(audiogen.INVALID_CASES))
async def test_probe_async_rejects_with_the_same_reason(corpus: dict[str, Path], case: str) -> None:
    with pytest.raises(InvalidAudioError) as caught:
        await probe_audio_async(corpus[case])
    assert audiogen.INVALID_CASES[case] in caught.value.reason


async def test_probe_async_equals_sync(corpus: dict[str, Path]) -> None:
    for case in ("speech", "stereo_96k", "opus"):
        assert await probe_audio_async(corpus[case]) == probe_audio(corpus[case])


def test_truncation_reason_names_both_durations(corpus: dict[str, Path]) -> None:
    with pytest.raises(InvalidAudioError, match=r"promises 6\.0 s .* only 2\.\d s"):
        probe_audio(corpus["truncated"])


def test_random_bytes_are_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(bytes((i * 2654435761) % 256 for i in range(200_000)))
    with pytest.raises(InvalidAudioError) as caught:
        probe_audio(junk)
    assert caught.value.reason


def test_invalid_audio_is_a_user_facing_error() -> None:
    assert issubclass(InvalidAudioError, InvalidInput)


def test_probe_timeout_becomes_invalid_audio(corpus: dict[str, Path]) -> None:
    with pytest.raises(InvalidAudioError, match="took too long"):
        probe_audio(corpus["stereo_96k"], timeout=0.001)


# --- the ffmpeg helpers -----------------------------------------------------------------------


def test_binary_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_binary_cache: None
) -> None:
    link = tmp_path / "my-ffmpeg"
    link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv(ff.FFMPEG_BINARY_ENV, str(link))
    assert ff.ffmpeg_binary() == str(link)
    # cached until cleared
    monkeypatch.setenv(ff.FFMPEG_BINARY_ENV, "/nonexistent/ffmpeg")
    assert ff.ffmpeg_binary() == str(link)
    ff.clear_ffmpeg_binary_cache()
    with pytest.raises(ff.FFmpegNotFoundError, match="not an executable"):
        ff.ffmpeg_binary()


def test_binary_from_path_then_bundled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_binary_cache: None
) -> None:
    monkeypatch.delenv(ff.FFMPEG_BINARY_ENV, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("PATH", str(bin_dir))
    assert ff.ffmpeg_binary() == str(bin_dir / "ffmpeg")
    ff.clear_ffmpeg_binary_cache()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("ffmpeg") is None
    assert ff.ffmpeg_binary() == imageio_ffmpeg.get_ffmpeg_exe()


async def test_run_ffmpeg_reports_exit_code_and_stderr() -> None:
    ok = await ff.run_ffmpeg(["-hide_banner", "-version"], timeout=30)
    assert ok.returncode == 0
    bad = await ff.run_ffmpeg(["-hide_banner", "-i", "/definitely/not/here.wav"], timeout=30)
    assert bad.returncode != 0
    assert "No such file or directory" in bad.stderr


def _slow_args() -> list[str]:
    # -re reads the input at its native rate: 60 s of sine takes 60 s.
    return [*ff.base_args(), "-re", "-f", "lavfi", "-i", "sine=duration=60", "-f", "null", "-"]


async def test_run_ffmpeg_kills_on_timeout() -> None:
    before = _children_of_this_process()
    started = time.monotonic()
    with pytest.raises(ff.FFmpegTimeoutError):
        await ff.run_ffmpeg(_slow_args(), timeout=0.5)
    assert time.monotonic() - started < 10
    assert _children_of_this_process() <= before


async def test_run_ffmpeg_kills_on_cancellation() -> None:
    before = _children_of_this_process()
    task = asyncio.create_task(ff.run_ffmpeg(_slow_args(), timeout=None))
    await asyncio.sleep(0.3)
    assert _children_of_this_process() - before  # it is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _children_of_this_process() <= before


def test_run_ffmpeg_sync_and_its_timeout() -> None:
    assert ff.run_ffmpeg_sync(["-hide_banner", "-version"], timeout=30).returncode == 0
    started = time.monotonic()
    with pytest.raises(ff.FFmpegTimeoutError):
        ff.run_ffmpeg_sync(_slow_args(), timeout=0.5)
    assert time.monotonic() - started < 10


async def test_run_ffmpeg_keeps_stderr_bounded() -> None:
    # ashowinfo logs a line per audio frame (verbose level): about 5200 lines for two minutes.
    args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "verbose",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=120",
        "-af",
        "ashowinfo",
        "-f",
        "null",
        "-",
    ]
    result = await ff.run_ffmpeg(args, timeout=60)
    assert result.returncode == 0
    assert "lines of ffmpeg output dropped" in result.stderr
    assert result.stderr.count("\n") < 4100


async def test_run_ffmpeg_when_the_binary_vanished(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_binary_cache: None
) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv(ff.FFMPEG_BINARY_ENV, str(fake))
    assert ff.ffmpeg_binary() == str(fake)  # resolved and cached...
    fake.unlink()  # ...then removed: starting it fails cleanly
    with pytest.raises(ff.FFmpegNotFoundError, match="could not start"):
        await ff.run_ffmpeg(["-version"], timeout=5)
    with pytest.raises(ff.FFmpegNotFoundError, match="could not start"):
        ff.run_ffmpeg_sync(["-version"], timeout=5)
