"""The Discord client: resources come in through the constructor, cogs and buttons are
registered in `setup_hook`, so persistent panel buttons keep working after a restart."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from typing import Any

import discord
from discord.ext import commands

from bot.errors import install_error_handler
from bot.playback import PlayController
from bot.voice.pacer import Pacer
from bot.voice.packets import PacketCache
from bot.voice.player import PlayerManager
from core.config import Settings
from core.services.container import Services

log = logging.getLogger(__name__)


def bot_intents() -> discord.Intents:
    # No privileged intents: slash commands carry the member, voice states come with guilds.
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    return intents


class SoundBotMixin:
    """The soundboard's behaviour, shared by the plain and the auto-sharded client."""

    settings: Settings
    services: Services

    def __init__(self, settings: Settings, services: Services, **options: Any) -> None:
        super().__init__(  # type: ignore[call-arg]
            command_prefix=commands.when_mentioned,
            intents=bot_intents(),
            help_command=None,
            owner_ids=set(settings.discord_owner_ids) or None,
            guild_ready_timeout=settings.discord_guild_ready_timeout,
            **options,
        )
        self.settings = settings
        self.services = services
        self.pacer = Pacer()
        self.packet_cache = PacketCache()
        self.players = PlayerManager(self)  # type: ignore[arg-type]
        self.plays = PlayController(self)  # type: ignore[arg-type]
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def bot(self) -> commands.Bot:
        return self  # type: ignore[return-value]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def setup_hook(self) -> None:
        from bot.cogs import load_all

        install_error_handler(self.bot)
        await load_all(self.bot)
        self.pacer.start()
        self.spawn(self._log_pacer_stats())
        await self.services.extractions.start_processor()
        if self.settings.normalize_worker_in_bot:
            await self.services.normalize_worker.start()
        await self.sync_commands()

    async def _log_pacer_stats(self) -> None:
        """One log line per interval while audio flows: how many packets, how late."""
        while True:
            await asyncio.sleep(self.settings.pacer_stats_interval_seconds)
            stats = self.pacer.snapshot()
            if stats.packets:
                log.info(
                    "pacer streams=%s packets=%s late_over_20ms=%s p99_ms<=%s max_late_ms=%.1f",
                    self.pacer.active,
                    stats.packets,
                    stats.late_over_20ms,
                    stats.percentile_bound_ms(99),
                    stats.max_lateness * 1000,
                )

    async def sync_commands(self) -> None:
        tree = self.bot.tree
        synced = await tree.sync()
        log.info("slash commands synced count=%s", len(synced))
        for guild_id in self.settings.discord_sync_guild_ids:
            guild = discord.Object(id=guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)

    async def on_ready(self) -> None:
        # Everything loaded so far lives as long as the process: keep the garbage collector
        # from scanning it again and again (long gen-2 pauses would delay audio packets).
        gc.collect()
        gc.freeze()
        user = self.bot.user
        log.info("bot ready user=%s guilds=%s", user.id if user else None, len(self.bot.guilds))

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.services.guilds.ensure(guild.id, guild.name)
        log.info("joined guild guild=%s name=%r", guild.id, guild.name)

    async def close(self) -> None:
        await self.services.extractions.stop_processor()
        await self.services.normalize_worker.stop()
        await self.players.close()
        self.pacer.close()
        await super().close()  # type: ignore[misc]


class SoundBot(SoundBotMixin, commands.Bot):
    """One gateway connection, opened at DISCORD_GATEWAY_URL."""


class ShardedSoundBot(SoundBotMixin, commands.AutoShardedBot):
    """SHARD_COUNT shards, of which this process runs SHARD_IDS (default: all)."""


AnySoundBot = SoundBot | ShardedSoundBot


def make_bot(settings: Settings, services: Services, **options: Any) -> AnySoundBot:
    if settings.shard_count is None:
        return SoundBot(settings, services, **options)
    options.setdefault("shard_count", settings.shard_count)
    if settings.shard_ids:
        options.setdefault("shard_ids", settings.shard_ids)
    return ShardedSoundBot(settings, services, **options)
