"""One thread paces every guild's stream at 20 ms per packet.

discord.py's stock player runs a thread per stream; with hundreds of streams those threads
fight over the GIL and fall behind. Here a single loop sends each stream's packet when it is
due, sleeping until the earliest deadline. A new stream's first packet goes out at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from discord.opus import OPUS_SILENCE

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.020
SILENCE_FRAMES = 5
# While the voice connection is reconnecting a stream waits, up to this long.
RECONNECT_GRACE_SECONDS = 15.0


class VoiceSender(Protocol):
    """What the pacer needs from a voice connection (discord.VoiceClient has both)."""

    def is_connected(self) -> bool: ...

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None: ...


@dataclass(eq=False)
class Stream:
    sender: VoiceSender
    packets: Iterator[bytes]
    on_done: Callable[[Stream], None]
    label: str = ""
    sent: int = 0
    error: str | None = None
    stopped: bool = False
    started_at: float = 0.0
    first_packet_at: float | None = None
    _silence_left: int = SILENCE_FRAMES
    _waiting_since: float | None = None
    _done: bool = False
    lateness: list[float] = field(default_factory=list)

    def stop(self) -> None:
        """Ask the pacer to end this stream (it sends the closing silence frames)."""
        self.stopped = True


LATENESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 1000)


@dataclass
class PacerStats:
    """Send lateness against each packet's 20 ms schedule, since the last snapshot."""

    packets: int = 0
    late_over_20ms: int = 0
    max_lateness: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS_MS) + 1))

    def observe(self, late: float) -> None:
        self.packets += 1
        if late > FRAME_SECONDS:
            self.late_over_20ms += 1
        if late > self.max_lateness:
            self.max_lateness = late
        late_ms = late * 1000
        for index, bound in enumerate(LATENESS_BUCKETS_MS):
            if late_ms <= bound:
                self.buckets[index] += 1
                return
        self.buckets[-1] += 1

    def percentile_bound_ms(self, q: float) -> float:
        """The smallest bucket bound that at least `q` percent of packets stayed under."""
        if not self.packets:
            return 0.0
        needed = self.packets * q / 100
        seen = 0
        for index, count in enumerate(self.buckets):
            seen += count
            if seen >= needed:
                return (
                    float(LATENESS_BUCKETS_MS[index])
                    if index < len(LATENESS_BUCKETS_MS)
                    else (self.max_lateness * 1000)
                )
        return self.max_lateness * 1000


class Pacer:
    def __init__(self, *, record_lateness: bool = False) -> None:
        self._heap: list[tuple[float, int, Stream]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.record_lateness = record_lateness
        self.stats = PacerStats()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="soundboard-pacer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def snapshot(self) -> PacerStats:
        """The statistics since the previous snapshot (and start a new period)."""
        stats, self.stats = self.stats, PacerStats()
        return stats

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._heap)

    def play(
        self,
        sender: VoiceSender,
        packets: Iterable[bytes],
        on_done: Callable[[Stream], None],
        *,
        label: str = "",
    ) -> Stream:
        """Start streaming now; `on_done(stream)` is called from the pacer thread at the end."""
        stream = Stream(sender, iter(packets), on_done, label=label)
        now = time.perf_counter()
        stream.started_at = now
        with self._cond:
            heapq.heappush(self._heap, (now, next(self._counter), stream))
            self._cond.notify()
        self.start()
        return stream

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                while not self._closing:
                    if heap:
                        delay = heap[0][0] - time.perf_counter()
                        if delay <= 0:
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
                if self._closing:
                    return
                due, _, stream = heapq.heappop(heap)
            next_due = self._tick(stream, due)
            if next_due is not None:
                with self._cond:
                    heapq.heappush(heap, (next_due, next(self._counter), stream))
            else:
                self._finish(stream)

    def _tick(self, stream: Stream, due: float) -> float | None:
        """Send one packet of `stream`; return when the next is due, or None when done."""
        now = time.perf_counter()
        sender = stream.sender
        try:
            connected = sender.is_connected()
        except Exception:
            connected = False
        if not connected:
            # Hold our place while discord.py reconnects (close codes 4006/4015 and the like).
            if stream._waiting_since is None:
                stream._waiting_since = now
            if now - stream._waiting_since > RECONNECT_GRACE_SECONDS:
                stream.error = "the voice connection was lost"
                return None
            return now + FRAME_SECONDS
        if stream._waiting_since is not None:
            stream._waiting_since = None
            due = now
        packet: bytes | None = None
        if not stream.stopped:
            try:
                packet = next(stream.packets, None)
            except Exception as exc:  # a broken file mid-stream
                stream.error = f"the sound file could not be read ({exc})"
        if packet is None:
            if stream._silence_left <= 0:
                return None
            stream._silence_left -= 1
            packet = OPUS_SILENCE
        try:
            sender.send_audio_packet(packet, encode=False)
        except Exception as exc:
            stream.error = f"sending audio failed ({exc})"
            return None
        if stream.first_packet_at is None:
            stream.first_packet_at = now
        stream.sent += 1
        late = now - due
        self.stats.observe(late)
        if self.record_lateness:
            stream.lateness.append(late)
        return due + FRAME_SECONDS

    def _finish(self, stream: Stream) -> None:
        if stream._done:
            return
        stream._done = True
        try:
            stream.on_done(stream)
        except Exception:
            log.exception("stream callback failed stream=%s", stream.label)
