"""The event bus that core services publish on and the bot and web app subscribe to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    name: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class UserCreditsChanged(Event):
    name: ClassVar[str] = "user_credits_changed"

    user_id: int
    discord_id: int | None
    old_balance: int
    new_balance: int
    transaction: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlayRequested(Event):
    """A play asked for outside Discord (the web API); the bot owning the guild carries it out.
    `guild_id` is the sound's guild, 0 for a global-library sound (played wherever the member
    is in voice)."""

    name: ClassVar[str] = "play_requested"

    request_id: str
    user_id: int
    discord_id: int
    sound_id: int
    guild_id: int


@dataclass(frozen=True)
class PlayClaimed(Event):
    """A bot process found the member of a PlayRequested and is carrying the play out; its
    PlayAnswered follows (it may take a while: joining a voice channel takes seconds)."""

    name: ClassVar[str] = "play_claimed"

    request_id: str
    guild_id: int


@dataclass(frozen=True)
class PlayAnswered(Event):
    """The outcome of a PlayRequested. `code` is stable ("playing", "queued", "not_in_voice",
    "insufficient_credits", "queue_full", ...); `message` is written for the member.
    `balance_after` is the balance after the play (or the balance that was too low)."""

    name: ClassVar[str] = "play_answered"

    request_id: str
    ok: bool
    code: str
    message: str
    guild_id: int | None = None
    position: int | None = None
    balance_after: int | None = None


@dataclass(frozen=True)
class ExtractionUpdated(Event):
    name: ClassVar[str] = "extraction_updated"

    extraction_id: int
    status: str
    progress: float = 0.0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (UserCreditsChanged, PlayRequested, PlayClaimed, PlayAnswered, ExtractionUpdated)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    payload = dict(data)
    cls = EVENT_TYPES[payload.pop("name")]
    return cls(**payload)


Handler = Callable[[Event], Awaitable[None]]


class EventBus(Protocol):
    async def publish(self, event: Event) -> None: ...

    def subscribe(self, handler: Handler) -> Callable[[], None]: ...

    def stream(
        self, *, maxsize: int = 100
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalEventBus:
    """In-process bus: handlers run as tasks so a slow subscriber never blocks a publisher."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        for handler in list(self._handlers):
            task = asyncio.get_running_loop().create_task(self._run(handler, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, event: Event) -> None:
        try:
            await handler(event)
        except Exception:
            log.exception("event handler failed event=%s", event.name)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        self._handlers.append(handler)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(handler)

        return unsubscribe

    @contextlib.asynccontextmanager
    async def stream(self, *, maxsize: int = 100) -> AsyncIterator[AsyncIterator[Event]]:
        """Events as an async iterator; a subscriber that falls behind loses the oldest events."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)

        async def enqueue(event: Event) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

        async def iterate() -> AsyncIterator[Event]:
            while True:
                yield await queue.get()

        unsubscribe = self.subscribe(enqueue)
        try:
            yield iterate()
        finally:
            unsubscribe()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._handlers.clear()
