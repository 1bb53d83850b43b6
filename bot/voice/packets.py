"""Opus packets straight from a sound's Ogg Opus playback file: no ffmpeg, no encoding."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from discord.oggparse import OggError, OggStream

log = logging.getLogger(__name__)

_HEADER_MAGICS = (b"OpusHead", b"OpusTags")
# Short sounds are played again and again: keep their packets in memory (about 16 kB/s).
CACHE_MAX_BYTES = 64 * 1024 * 1024
CACHE_MAX_FILE_BYTES = 2 * 1024 * 1024


def iter_opus_packets(path: Path) -> Iterator[bytes]:
    """The audio packets of an Ogg Opus file, header packets skipped."""
    with path.open("rb") as fh:
        for packet in OggStream(fh).iter_packets():
            if packet[:8] in _HEADER_MAGICS:
                continue
            yield packet


class PacketCache:
    """An LRU of whole packet lists, keyed by path, size and modification time."""

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, int], tuple[list[bytes], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def packets(self, path: Path) -> list[bytes] | Iterator[bytes]:
        """All packets (cached) for small files; a lazy iterator for big ones.

        Raises FileNotFoundError or OggError when the file is missing or broken.
        """
        stat = os.stat(path)
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        if stat.st_size > CACHE_MAX_FILE_BYTES:
            iterator = iter_opus_packets(path)
            return iterator
        packets = list(iter_opus_packets(path))
        if not packets:
            raise OggError("no audio packets")
        with self._lock:
            self._items[key] = (packets, stat.st_size)
            self._bytes += stat.st_size
            while self._bytes > self.max_bytes and self._items:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
        return packets
