"""Plays asked for from the web API (core/services/remote_play.py), carried out here.

Every bot process hears every PlayRequested. A guild sound is handled only by the process that
has the guild (another shard owns the others); that process answers at once when the member
is not in voice there. A global-library sound is played in whichever guild of this process the
member is in voice; a process that does not see the member stays silent, since another shard
may. The play itself goes through `bot.plays.request`, the path /play takes, so it is charged,
queued, capped and cooled down the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import discord
from discord.ext import commands

from bot.errors import GENERIC
from core.errors import InsufficientCredits, SoundboardError
from core.events import Event, PlayAnswered, PlayClaimed, PlayRequested

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)

SOURCE = "api"


def in_voice(guild: discord.Guild, discord_id: int) -> discord.Member | None:
    """The member if they are in one of `guild`'s voice channels (discord.py caches members
    in voice with the voice_states intent, so no member list is needed)."""
    member = guild.get_member(discord_id)
    if member is None or member.voice is None or member.voice.channel is None:
        return None
    return member


class RemotePlayCog(commands.Cog):
    def __init__(self, bot: AnySoundBot) -> None:
        self.bot = bot
        self._unsubscribe: Callable[[], None] | None = None

    async def cog_load(self) -> None:
        self._unsubscribe = self.bot.services.events.subscribe(self._on_event)

    async def cog_unload(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, PlayRequested):
            await self.handle(event)

    def find_member(self, event: PlayRequested) -> discord.Member | None:
        """Where to play a global sound: the member in voice in one of this process's guilds."""
        for guild in self.bot.guilds:
            member = in_voice(guild, event.discord_id)
            if member is not None:
                return member
        return None

    async def handle(self, event: PlayRequested) -> None:
        bot = self.bot
        if bot.is_closed():
            return
        if event.guild_id:
            guild = bot.get_guild(event.guild_id)
            if guild is None:
                return  # another process (shard) owns this guild
            member = in_voice(guild, event.discord_id)
            if member is None:
                log.info(
                    "remote play refused request=%s guild=%s user=%s reason=not_in_voice",
                    event.request_id,
                    guild.id,
                    event.discord_id,
                )
                await self._answer(
                    event,
                    ok=False,
                    code="not_in_voice",
                    message=(
                        f"Join a voice channel in {guild.name} first, then try again "
                        "(that sound belongs to that server)."
                    ),
                    guild_id=guild.id,
                )
                return
        else:
            member = self.find_member(event)
            if member is None:
                return  # not in voice anywhere this process sees; another shard may answer
        guild_id = member.guild.id
        await bot.services.events.publish(
            PlayClaimed(request_id=event.request_id, guild_id=guild_id)
        )
        try:
            sound = await bot.services.sounds.get_for_guild(event.sound_id, guild_id)
            result = await bot.plays.request(member, sound, source=SOURCE)
        except SoundboardError as exc:
            log.info(
                "remote play refused request=%s guild=%s user=%s sound=%s code=%s reason=%s",
                event.request_id,
                guild_id,
                member.id,
                event.sound_id,
                exc.code,
                exc,
            )
            await self._answer(
                event,
                ok=False,
                code=exc.code,
                message=str(exc),
                guild_id=guild_id,
                balance_after=exc.balance if isinstance(exc, InsufficientCredits) else None,
            )
            return
        except Exception:
            log.exception(
                "remote play failed request=%s guild=%s user=%s sound=%s",
                event.request_id,
                guild_id,
                member.id,
                event.sound_id,
            )
            await self._answer(event, ok=False, code="internal", message=GENERIC, guild_id=guild_id)
            return
        playing = result.position == 0
        what = f"'{sound.name}' ({sound.duration_ms / 1000:.1f} s)"
        message = (
            f"Playing {what} in {member.guild.name}."
            if playing
            else f"Queued {what} in {member.guild.name} at position {result.position}."
        )
        log.info(
            "remote play request=%s guild=%s user=%s sound=%s position=%s",
            event.request_id,
            guild_id,
            member.id,
            sound.id,
            result.position,
        )
        await self._answer(
            event,
            ok=True,
            code="playing" if playing else "queued",
            message=message,
            guild_id=guild_id,
            position=result.position,
            balance_after=result.charge.balance_after if result.charge is not None else None,
        )

    async def _answer(
        self,
        event: PlayRequested,
        *,
        ok: bool,
        code: str,
        message: str,
        guild_id: int | None,
        position: int | None = None,
        balance_after: int | None = None,
    ) -> None:
        await self.bot.services.events.publish(
            PlayAnswered(
                request_id=event.request_id,
                ok=ok,
                code=code,
                message=message,
                guild_id=guild_id,
                position=position,
                balance_after=balance_after,
            )
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(RemotePlayCog(cast("AnySoundBot", bot)))
