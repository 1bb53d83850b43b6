"""Locating and running ffmpeg.

Only the ``ffmpeg`` binary is used (never ffprobe: the static build shipped in the
``imageio-ffmpeg`` wheel has none). Every run goes through :func:`run_ffmpeg` (async) or
:func:`run_ffmpeg_sync`, which bound the run time, kill the child on timeout or cancellation and
keep a bounded amount of its stderr, which is where ffmpeg reports everything we parse.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "FFMPEG_BINARY_ENV",
    "FFmpegError",
    "FFmpegNotFoundError",
    "FFmpegResult",
    "FFmpegTimeoutError",
    "base_args",
    "clear_ffmpeg_binary_cache",
    "ffmpeg_binary",
    "run_ffmpeg",
    "run_ffmpeg_sync",
]

logger = logging.getLogger(__name__)

FFMPEG_BINARY_ENV = "FFMPEG_BINARY"

# stderr is kept as the first and last this-many lines; a corrupt file can make ffmpeg log an
# error per packet, and we never want to buffer that without bound.
_STDERR_HEAD_LINES = 2000
_STDERR_TAIL_LINES = 2000
_MAX_LINE_BYTES = 64 * 1024


class FFmpegError(Exception):
    """ffmpeg could not be found or started, failed, or timed out."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class FFmpegNotFoundError(FFmpegError):
    """No usable ffmpeg binary."""


class FFmpegTimeoutError(FFmpegError):
    """An ffmpeg run exceeded its time limit (the process was killed)."""


class FFmpegResult(NamedTuple):
    returncode: int
    stderr: str


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to use (cached; see :func:`clear_ffmpeg_binary_cache`).

    Order: the ``FFMPEG_BINARY`` environment variable (a path or a name on PATH), then
    ``ffmpeg`` on PATH, then the static binary from the ``imageio-ffmpeg`` wheel.
    """
    configured = os.environ.get(FFMPEG_BINARY_ENV, "").strip()
    if configured:
        resolved = shutil.which(configured)
        if resolved is None:
            raise FFmpegNotFoundError(
                f"{FFMPEG_BINARY_ENV}={configured!r} is not an executable file or command"
            )
        logger.debug("using ffmpeg from %s: %s", FFMPEG_BINARY_ENV, resolved)
        return resolved
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        logger.debug("using ffmpeg from PATH: %s", on_path)
        return on_path
    try:
        import imageio_ffmpeg

        bundled = str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as exc:  # ImportError, or RuntimeError when the wheel has no binary
        raise FFmpegNotFoundError(
            f"no ffmpeg found: set {FFMPEG_BINARY_ENV}, put ffmpeg on PATH or install "
            f"imageio-ffmpeg ({exc})"
        ) from exc
    logger.debug("using ffmpeg from imageio-ffmpeg: %s", bundled)
    return bundled


def clear_ffmpeg_binary_cache() -> None:
    """Forget the cached :func:`ffmpeg_binary` (e.g. after changing ``FFMPEG_BINARY``)."""
    ffmpeg_binary.cache_clear()


def base_args(loglevel: str = "error") -> list[str]:
    """Arguments every non-interactive run starts with."""
    return ["-nostdin", "-hide_banner", "-nostats", "-loglevel", loglevel]


class _StderrBuffer:
    """Keeps the first and the last lines of a stream, counting what was dropped between."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.dropped = 0

    def feed(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if len(self.head) < _STDERR_HEAD_LINES:
            self.head.append(text)
            return
        if len(self.tail) == self.tail.maxlen:
            self.dropped += 1
        self.tail.append(text)

    def text(self) -> str:
        middle = (
            [f"[... {self.dropped} lines of ffmpeg output dropped ...]"] if self.dropped else []
        )
        return "\n".join([*self.head, *middle, *self.tail])


def _command(args: Iterable[str]) -> list[str]:
    return [ffmpeg_binary(), *args]


def _start_error(exc: OSError, cmd: Sequence[str]) -> FFmpegError:
    return FFmpegNotFoundError(f"could not start {cmd[0]!r}: {exc}")


async def _read_lines(stream: asyncio.StreamReader, buffer: _StderrBuffer) -> None:
    partial = b""
    while chunk := await stream.read(64 * 1024):
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            buffer.feed(line)
        if len(partial) > _MAX_LINE_BYTES:  # no newline in sight: keep memory bounded
            buffer.feed(partial[:_MAX_LINE_BYTES])
            partial = b""
    if partial:
        buffer.feed(partial)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    # Reap it even if we are being cancelled again meanwhile, so no zombie is left behind.
    await asyncio.shield(proc.wait())


async def run_ffmpeg(args: Sequence[str], *, timeout: float | None) -> FFmpegResult:
    """Run ffmpeg with ``args`` (without the binary) and return ``(returncode, stderr)``.

    The process is killed if it runs longer than ``timeout`` seconds (raising
    :class:`FFmpegTimeoutError`) or if the awaiting task is cancelled. A non-zero exit code is
    *not* an exception here: callers decide what a failure means from the stderr.
    """
    cmd = _command(args)
    logger.debug("running %s", subprocess.list2cmdline(cmd))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise _start_error(exc, cmd) from exc
    assert proc.stderr is not None
    buffer = _StderrBuffer()
    try:
        async with asyncio.timeout(timeout):
            await _read_lines(proc.stderr, buffer)
            returncode = await proc.wait()
    except TimeoutError:
        await _kill(proc)
        raise FFmpegTimeoutError(
            f"ffmpeg did not finish within {timeout:g} s and was killed", stderr=buffer.text()
        ) from None
    except BaseException:
        await _kill(proc)
        raise
    return FFmpegResult(returncode, buffer.text())


def run_ffmpeg_sync(args: Sequence[str], *, timeout: float | None) -> FFmpegResult:
    """Blocking twin of :func:`run_ffmpeg` (for threads, scripts and ``asyncio.to_thread``)."""
    cmd = _command(args)
    logger.debug("running %s", subprocess.list2cmdline(cmd))
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise _start_error(exc, cmd) from exc
    assert proc.stderr is not None
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    timer = threading.Timer(timeout, on_timeout) if timeout is not None else None
    buffer = _StderrBuffer()
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        while line := proc.stderr.readline(_MAX_LINE_BYTES):
            buffer.feed(line)
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        proc.stderr.close()
    if timed_out.is_set() and returncode != 0:
        raise FFmpegTimeoutError(
            f"ffmpeg did not finish within {timeout:g} s and was killed", stderr=buffer.text()
        )
    return FFmpegResult(returncode, buffer.text())
