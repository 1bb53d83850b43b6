"""One scheduler on the event loop paces every guild's stream at 20 ms per packet.

discord.py's stock player runs a thread per stream; with hundreds of streams those threads
fight over the GIL and fall behind. A single pacing thread is not enough either: every packet
releases the GIL twice (encryption, `sendto`), and each time the event loop thread is busy (a
burst of slash commands) the pacer waits up to the interpreter's 5 ms switch interval to get it
back; at 500 streams that left packets seconds late. So the pacer runs on the event loop itself:
one timer fires when the earliest packet is due and sends every packet due by then, so a packet
is late by at most the longest loop callback. A new stream's first packet goes out at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from discord.opus import OPUS_SILENCE

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.020
SILENCE_FRAMES = 5
# The loop's timers have millisecond resolution: a packet due within this is sent now.
EARLY_SECONDS = 0.001
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
    """Call every method on the event loop's thread (`play` from a running loop)."""

    def __init__(self, *, record_lateness: bool = False) -> None:
        self._heap: list[tuple[float, int, Stream]] = []
        self._counter = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._sending = False
        self.record_lateness = record_lateness
        self.stats = PacerStats()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        """Stop sending; streams still queued end without their `on_done`."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, math.inf
        self._heap.clear()
        self._loop = None

    def snapshot(self) -> PacerStats:
        """The statistics since the previous snapshot (and start a new period)."""
        stats, self.stats = self.stats, PacerStats()
        return stats

    @property
    def active(self) -> int:
        return len(self._heap)

    def play(
        self,
        sender: VoiceSender,
        packets: Iterable[bytes],
        on_done: Callable[[Stream], None],
        *,
        label: str = "",
    ) -> Stream:
        """Start streaming now (the first packet is sent before this returns, unless called
        from an `on_done`); `on_done(stream)` is called on the loop at the end."""
        if self._loop is None:
            self.start()
        stream = Stream(sender, iter(packets), on_done, label=label)
        now = time.perf_counter()
        stream.started_at = now
        heapq.heappush(self._heap, (now, next(self._counter), stream))
        if self._sending:
            return stream
        self._send_due()
        return stream

    def _on_timer(self) -> None:
        self._timer, self._timer_due = None, math.inf
        self._send_due()

    def _send_due(self) -> None:
        """Send every packet due now (or within EARLY_SECONDS), then re-arm the one timer."""
        if self._loop is None:
            return
        heap = self._heap
        clock = time.perf_counter
        self._sending = True
        try:
            now = clock()
            while heap and heap[0][0] <= now + EARLY_SECONDS:
                due, _, stream = heapq.heappop(heap)
                next_due = self._tick(stream, due, now)
                if next_due is None:
                    self._finish(stream)
                else:
                    heapq.heappush(heap, (next_due, next(self._counter), stream))
                now = clock()
        finally:
            self._sending = False
        self._arm()

    def _arm(self) -> None:
        if not self._heap or self._loop is None:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        delay = max(0.0, due - time.perf_counter())
        self._timer = self._loop.call_later(delay, self._on_timer)
        self._timer_due = due

    def _tick(self, stream: Stream, due: float, now: float) -> float | None:
        """Send one packet of `stream`; return when the next is due, or None when done."""
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
