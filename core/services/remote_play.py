"""Plays asked for outside Discord (the web API), carried out by whichever bot process can see
the member in voice.

The web process and the bot may be separate processes that share only the database and the
event bus, so a play is a small conversation on the bus:

1. `request` publishes `PlayRequested` (guild_id 0 for a global-library sound);
2. the bot process owning the sound's guild (for a global sound: the one that sees the member
   in a voice channel) publishes `PlayClaimed` at once, then plays through the same path as
   /play (charged the same way) and publishes `PlayAnswered`. A process that owns the guild
   but does not see the member in voice there answers `not_in_voice` straight away.
3. `request` returns the `PlayAnswered`.

Nobody claims a request when the member is in no voice channel any bot process sees, or when
no bot is running: then `request` gives up after `claim_timeout` seconds (short, so a hotkey
press gets its answer quickly). Once a request is claimed it waits up to `timeout` seconds in
all, since joining a voice channel can take several seconds. A play that is answered after
`request` gave up still happens (and is charged): the bot cannot know nobody is listening.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import Conflict
from core.events import Event, EventBus, PlayAnswered, PlayClaimed, PlayRequested
from core.models import Sound

log = logging.getLogger(__name__)

# How long to wait for some bot process to take a request on (a few bus round trips).
CLAIM_TIMEOUT_SECONDS = 3.0
# How long to wait in all for the answer of a claimed request (the bot may join voice first).
ANSWER_TIMEOUT_SECONDS = 20.0

NOT_SEEN_MESSAGE = "You're not in a voice channel the bot can see (or the bot is not running)."
NO_ANSWER_MESSAGE = (
    "The bot took your request but did not answer in time; the sound may still play."
)


@dataclass
class _Waiter:
    claimed: asyncio.Future[None]
    answered: asyncio.Future[PlayAnswered]
    guild_id: int | None = field(default=None)


class RemotePlayService:
    """`request` a play from any process; the bot's remote cog carries it out."""

    def __init__(
        self,
        events: EventBus,
        *,
        claim_timeout: float = CLAIM_TIMEOUT_SECONDS,
        timeout: float = ANSWER_TIMEOUT_SECONDS,
    ) -> None:
        self._events = events
        self.claim_timeout = claim_timeout
        self.timeout = timeout
        self._waiters: dict[str, _Waiter] = {}
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Requests waiting for their answer in this process."""
        return len(self._waiters)

    async def request(
        self,
        *,
        user_id: int,
        discord_id: int,
        sound: Sound,
        timeout: float | None = None,
        claim_timeout: float | None = None,
    ) -> PlayAnswered:
        """Ask the bot to play `sound` for the member `discord_id` where they are in voice.

        Returns the bot's answer, successful or not (`ok`, `code`, `message`). Raises Conflict
        when no bot process took the request within the claim timeout (the member is in no
        voice channel a bot sees, or no bot runs), or did not answer within `timeout`."""
        total = self.timeout if timeout is None else timeout
        claim_wait = min(total, self.claim_timeout if claim_timeout is None else claim_timeout)
        loop = asyncio.get_running_loop()
        request_id = uuid.uuid4().hex
        waiter = _Waiter(claimed=loop.create_future(), answered=loop.create_future())
        # Listen before publishing: the answer may come back before publish() returns.
        self._waiters[request_id] = waiter
        if self._unsubscribe is None:
            self._unsubscribe = self._events.subscribe(self._on_event)
        started = loop.time()
        try:
            await self._events.publish(
                PlayRequested(
                    request_id=request_id,
                    user_id=user_id,
                    discord_id=discord_id,
                    sound_id=sound.id or 0,
                    guild_id=sound.guild_id or 0,
                )
            )
            await asyncio.wait(
                (waiter.claimed, waiter.answered),
                timeout=claim_wait,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not waiter.answered.done():
                if not waiter.claimed.done():
                    log.info(
                        "remote play not claimed request=%s user=%s sound=%s seconds=%.1f",
                        request_id,
                        user_id,
                        sound.id,
                        claim_wait,
                    )
                    raise Conflict(NOT_SEEN_MESSAGE)
                remaining = max(0.0, started + total - loop.time())
                await asyncio.wait((waiter.answered,), timeout=remaining)
            if not waiter.answered.done():
                log.warning(
                    "remote play claimed but not answered request=%s user=%s sound=%s guild=%s",
                    request_id,
                    user_id,
                    sound.id,
                    waiter.guild_id,
                )
                raise Conflict(NO_ANSWER_MESSAGE)
            answer = waiter.answered.result()
        finally:
            del self._waiters[request_id]
            if not self._waiters and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
        log.info(
            "remote play answered request=%s user=%s sound=%s guild=%s ok=%s code=%s ms=%.0f",
            request_id,
            user_id,
            sound.id,
            answer.guild_id,
            answer.ok,
            answer.code,
            (loop.time() - started) * 1000,
        )
        return answer

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, PlayAnswered):
            waiter = self._waiters.get(event.request_id)
            if waiter is not None and not waiter.answered.done():
                waiter.answered.set_result(event)
        elif isinstance(event, PlayClaimed):
            waiter = self._waiters.get(event.request_id)
            if waiter is not None and not waiter.claimed.done():
                waiter.guild_id = event.guild_id
                waiter.claimed.set_result(None)
