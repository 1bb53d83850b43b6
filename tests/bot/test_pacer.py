"""The pacer on the event loop: every stream at 20 ms per packet, one timer for all of them."""

from __future__ import annotations

import asyncio
import itertools
import time

from bot.voice.pacer import Pacer, Stream


class RecordingSender:
    def __init__(self) -> None:
        self.sent_at: list[float] = []

    def is_connected(self) -> bool:
        return True

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        self.sent_at.append(time.perf_counter())


async def test_streams_started_one_after_another_share_one_timer() -> None:
    """What was tried: 50 streams started a few ms apart (the way plays arrive). Each must get a
    packet every 20 ms, and the pacer must wake about once per millisecond at most: a first
    version left one timer chain per started stream and woke the loop 100,000 times a second."""
    pacer = Pacer()
    pacer.start()
    wakes = 0
    send_due = pacer._send_due

    def counting() -> None:
        nonlocal wakes
        wakes += 1
        send_due()

    pacer._send_due = counting  # type: ignore[method-assign]
    senders = [RecordingSender() for _ in range(50)]
    done: list[Stream] = []
    try:
        for sender in senders:
            pacer.play(sender, itertools.repeat(b"\xf8\xff\xfe", 40), done.append)
            await asyncio.sleep(0.003)
        await asyncio.sleep(1.2)
    finally:
        pacer.close()
    assert len(done) == 50 and all(s.error is None for s in done)
    for sender in senders:
        assert len(sender.sent_at) == 40 + 5  # the sound, then five silence frames
        gaps = [b - a for a, b in itertools.pairwise(sender.sent_at)]
        assert 0.017 < sum(gaps) / len(gaps) < 0.025
        assert max(gaps) < 0.250
    assert wakes < 2_000, wakes
