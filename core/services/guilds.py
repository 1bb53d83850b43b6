"""Per-guild settings, with the global defaults from Settings where a guild sets nothing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from core.config import Settings
from core.db import Database
from core.errors import InvalidInput
from core.models import EntranceSound, Guild
from core.repositories import guilds

log = logging.getLogger(__name__)

CONFIG_CACHE_SECONDS = 5.0

EDITABLE = {
    "play_cost": (0, 1000),
    "cooldown_seconds": (0, 3600),
    "queue_cap": (1, 100),
    "idle_timeout_seconds": (5, 86400),
}


@dataclass(frozen=True)
class GuildConfig:
    guild_id: int
    play_cost: int
    cooldown_seconds: float
    queue_cap: int
    idle_timeout_seconds: int
    entrance_sounds_enabled: bool
    upload_role_id: int | None


class GuildService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._cache: dict[int, tuple[float, GuildConfig]] = {}

    async def ensure(self, guild_id: int, name: str = "") -> Guild:
        async with self._db.transaction() as session:
            return await guilds.ensure(session, guild_id=guild_id, name=name)

    async def config(self, guild_id: int) -> GuildConfig:
        """The guild's settings; cached briefly (every play reads them). Changes made in this
        process show at once, those made in another within CONFIG_CACHE_SECONDS."""
        cached = self._cache.get(guild_id)
        if cached is not None and time.monotonic() - cached[0] < CONFIG_CACHE_SECONDS:
            return cached[1]
        config = await self._load(guild_id)
        self._cache[guild_id] = (time.monotonic(), config)
        return config

    async def _load(self, guild_id: int) -> GuildConfig:
        async with self._db.session() as session:
            guild = await guilds.get(session, guild_id=guild_id)
        s = self._settings
        if guild is None:
            return GuildConfig(
                guild_id,
                s.credits_play_cost,
                s.play_cooldown_seconds,
                s.queue_cap,
                s.idle_timeout_seconds,
                True,
                None,
            )
        return GuildConfig(
            guild_id=guild_id,
            play_cost=guild.play_cost if guild.play_cost is not None else s.credits_play_cost,
            cooldown_seconds=guild.cooldown_seconds
            if guild.cooldown_seconds is not None
            else s.play_cooldown_seconds,
            queue_cap=guild.queue_cap if guild.queue_cap is not None else s.queue_cap,
            idle_timeout_seconds=guild.idle_timeout_seconds
            if guild.idle_timeout_seconds is not None
            else s.idle_timeout_seconds,
            entrance_sounds_enabled=guild.entrance_sounds_enabled,
            upload_role_id=guild.upload_role_id,
        )

    async def update(self, guild_id: int, **values: object) -> GuildConfig:
        """Change settings; a value of None goes back to the default."""
        for key, value in values.items():
            if key in EDITABLE and value is not None:
                low, high = EDITABLE[key]
                if not isinstance(value, int | float) or not low <= value <= high:
                    raise InvalidInput(f"{key.replace('_', ' ')} must be between {low} and {high}.")
            elif key not in ("entrance_sounds_enabled", "upload_role_id", *EDITABLE):
                raise InvalidInput(f"Unknown setting {key!r}.")
        async with self._db.transaction() as session:
            guild = await guilds.ensure(session, guild_id=guild_id)
            await guilds.update_settings(session, guild=guild, **values)
        log.info("guild settings changed guild=%s values=%s", guild_id, values)
        self._cache.pop(guild_id, None)
        return await self.config(guild_id)

    async def set_entrance(self, *, user_id: int, guild_id: int, sound_id: int) -> None:
        async with self._db.transaction() as session:
            await guilds.ensure(session, guild_id=guild_id)
            row = await session.get(EntranceSound, (user_id, guild_id))
            if row is None:
                session.add(EntranceSound(user_id=user_id, guild_id=guild_id, sound_id=sound_id))
            else:
                row.sound_id = sound_id
                session.add(row)

    async def clear_entrance(self, *, user_id: int, guild_id: int) -> bool:
        async with self._db.transaction() as session:
            row = await session.get(EntranceSound, (user_id, guild_id))
            if row is None:
                return False
            await session.delete(row)
            return True

    async def entrance_of(self, *, user_id: int, guild_id: int) -> int | None:
        async with self._db.session() as session:
            row = await session.get(EntranceSound, (user_id, guild_id))
        return row.sound_id if row else None
