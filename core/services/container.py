"""One place wires everything: the bot, the web app, the CLI and the tests all use `Services`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from core.config import Settings
from core.db import Database
from core.events import EventBus, LocalEventBus
from core.events_pg import PostgresEventBus
from core.metrics import Metrics
from core.repositories import plans
from core.services.accounts import AccountService
from core.services.credits import CreditsService
from core.services.extraction import ExtractionService
from core.services.guilds import GuildService
from core.services.normalize_worker import NormalizeWorker
from core.services.playback import PlaybackService
from core.services.playlists import PlaylistService
from core.services.remote_play import RemotePlayService
from core.services.scanner import Scanner
from core.services.sounds import SoundService
from core.services.users import UserService
from core.storage import LocalStorage, SoundStorage

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings, db: Database, events: EventBus | None = None) -> None:
        self.settings = settings
        self.db = db
        self._checkpoints: asyncio.Task[None] | None = None
        self.events: EventBus = events or LocalEventBus()
        self.credits = CreditsService(db, self.events)
        self.users = UserService(db, self.events, self.credits, settings.credits_default_plan)
        self.accounts = AccountService(db, self.users, self.credits)
        self.metrics = Metrics()
        self.storage: SoundStorage = LocalStorage(settings.sounds_dir)
        self.sounds = SoundService(db, settings, self.storage)
        self.scanner = Scanner(db, self.sounds)
        self.normalize_worker = NormalizeWorker(db, self.sounds)  # started by the bot
        self.guilds = GuildService(db, settings)
        self.playback = PlaybackService(self.credits, self.sounds, self.guilds)
        self.playlists = PlaylistService(db, self.sounds)
        self.extractions = ExtractionService.wire(self)
        self.remote_play = RemotePlayService(self.events)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        db = Database.from_url(
            settings.database_url,
            echo=settings.database_echo,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        # On PostgreSQL events reach every process (LISTEN/NOTIFY); SQLite stays in-process.
        events = None if settings.is_sqlite else PostgresEventBus.from_url(settings.database_url)
        return cls(settings, db, events)

    async def start(self) -> None:
        """Seed what every database needs; migrations have already run."""
        async with self.db.transaction() as session:
            await plans.ensure_defaults(session)
        self.storage.ensure_layout()
        # Only old temporaries: another process may be writing a fresh one right now.
        self.storage.clean_temp(older_than_seconds=3600)
        await self.events.start()
        if self.db.is_sqlite:
            self._checkpoints = asyncio.get_running_loop().create_task(self.db.run_checkpoints())

    async def close(self) -> None:
        await self.normalize_worker.stop()  # no-op unless started; hands unfinished work back
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        await self.events.close()
        await self.db.dispose()

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@asynccontextmanager
async def open_services(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Services]:
    """Migrate (when asked), then open every service; closes them on the way out."""
    if migrate:
        from core.migrate import upgrade

        await upgrade(settings.database_url)
    async with Services.from_settings(settings) as services:
        yield services
