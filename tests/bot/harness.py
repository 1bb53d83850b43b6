"""The real bot (make_bot + every cog) against the fake Discord, with real services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.client import AnySoundBot, make_bot
from bot.runner import point_discord_py
from core.models import Sound
from core.services.container import Services
from tests.conftest import make_settings
from tests.core import audiogen
from tests.fakediscord import FakeDiscord, FakeGuild, FakeMember
from tests.fakediscord.fixtures import discord_py_pointed_at, running_client

TONE_SECONDS = 0.6


@dataclass
class BotEnv:
    fake: FakeDiscord
    services: Services
    bot: AnySoundBot
    guild: FakeGuild
    alice: FakeMember
    bob: FakeMember
    admin: FakeMember
    tmp: Path
    sounds: dict[str, Sound] = field(default_factory=dict)
    clients: contextlib.AsyncExitStack | None = field(default=None, repr=False)

    async def add_tone(
        self,
        name: str,
        freq: int,
        *,
        seconds: float = TONE_SECONDS,
        guild_id: int | None = None,
        **extra: Any,
    ) -> Sound:
        path = await asyncio.to_thread(
            audiogen.render,
            self.tmp / f"{name}-{freq}.wav",
            f"sine=frequency={freq}:sample_rate=48000",
            seconds=seconds,
            rate=48000,
        )
        result = await self.services.sounds.add_file(
            path, name=name, guild_id=self.guild.id if guild_id is None else guild_id, **extra
        )
        self.sounds[name] = result.sound
        return result.sound

    async def slash(
        self, user: FakeMember, name: str, options: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        return await self.fake.send_slash_command(
            self.guild.id, self.guild.text_channel.id, user.id, name, options or {}, **kw
        )

    async def reply_text(
        self, user: FakeMember, name: str, options: dict[str, Any] | None = None
    ) -> str:
        """Run a command and return the text of its first answer (callback or followup)."""
        inter = await self.slash(user, name, options)
        return await answer_text(inter)

    async def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until nothing plays or waits in this guild (tests share one bot per module)."""

        def idle() -> bool:
            player = self.bot.players.existing(self.guild.id)
            return player is None or not player.busy

        await self.fake.wait_for(idle, timeout=timeout, what="the guild's player to be idle")

    async def join_voice(self, user: FakeMember) -> None:
        await self.fake.set_user_voice(self.guild.id, user.id, self.guild.voice_channel.id)

    async def restart_bot(self) -> AnySoundBot:
        """Close the bot and start a new one on the same services, settings and fake Discord,
        as a process restart would; messages the old bot posted stay on the fake."""
        assert self.clients is not None
        await self.bot.close()
        bot = make_bot(self.services.settings, self.services)
        await self.clients.enter_async_context(running_client(bot, self.fake))
        await self.fake.wait_for_commands()
        self.bot = bot
        return bot


async def answer_text(inter: Any, timeout: float = 10.0) -> str:
    callback = await inter.wait_for_callback(timeout=timeout)
    if callback.type in (5, 6):  # deferred: the text arrives as an edit or followup
        # Discord shows the first followup in place of the "thinking" message.
        await inter.fake.wait_for(
            lambda: inter.followups or inter.message_is_final(), timeout, "deferred answer"
        )
        message = inter.followups[0] if inter.followups else inter.original_message
        return str(message.get("content") or _embed_text(message))
    data = callback.data or {}
    return str(data.get("content") or _embed_text(data))


def _embed_text(message: dict[str, Any]) -> str:
    parts: list[str] = []
    for embed in message.get("embeds") or []:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f.get('name')}: {f.get('value')}" for f in embed.get("fields") or []]
    return "\n".join(p for p in parts if p)


@contextlib.asynccontextmanager
async def bot_env(tmp: Path, database_url: str, **setting_overrides: Any) -> AsyncIterator[BotEnv]:
    # Tests add sounds unnormalized on purpose: no background worker may normalize them.
    setting_overrides.setdefault("normalize_worker_in_bot", False)
    async with FakeDiscord() as fake:
        guild = await fake.add_guild(name="Soundboard Test")
        alice = await fake.add_member(guild.id, name="alice")
        bob = await fake.add_member(guild.id, name="bob")
        admin = await fake.add_member(guild.id, name="admin", permissions=1 << 5 | 1 << 3)
        settings = make_settings(
            tmp,
            database_url,
            discord_token=fake.token or "fake-token",
            discord_api_base_url=fake.api_base_url,
            discord_gateway_url=fake.gateway_url,
            discord_guild_ready_timeout=0.1,
            play_cooldown_seconds=0,
            **setting_overrides,
        )
        async with Services.from_settings(settings) as services:
            with discord_py_pointed_at(fake):
                point_discord_py(settings)
                bot = make_bot(settings, services)
                async with contextlib.AsyncExitStack() as clients:
                    await clients.enter_async_context(running_client(bot, fake))
                    await fake.wait_for_commands()
                    yield BotEnv(
                        fake, services, bot, guild, alice, bob, admin, tmp, clients=clients
                    )
