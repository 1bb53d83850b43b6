"""The one path every play takes: /play, panel buttons, playlists, entrances and the web API."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.voice.player import PlayerError, QueueItem
from core.models import Sound, User, utcnow
from core.services.credits import next_refill_at
from core.services.playback import PlayCharge

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)

ACCOUNT_CACHE_SECONDS = 30.0


@dataclass
class PlayResult:
    position: int  # 0: playing now
    charge: PlayCharge | None
    user: User


def avatar_of(member: discord.abc.User) -> str | None:
    return member.display_avatar.url if member.display_avatar else None


class PlayController:
    def __init__(self, bot: AnySoundBot) -> None:
        self.bot = bot
        self._last_play: dict[tuple[int, int], float] = {}
        self._accounts: dict[int, tuple[float, User]] = {}

    async def member_user(self, member: discord.abc.User) -> User:
        return await self.bot.services.users.ensure_discord_user(
            member.id, member.display_name, avatar_of(member)
        )

    async def _player_account(self, member: discord.abc.User) -> User:
        """The member's account for charging a play: only its id and plan matter here, so a
        recent copy saves a database read on the start-latency path. A due refill still goes
        through ensure_discord_user."""
        cached = self._accounts.get(member.id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < ACCOUNT_CACHE_SECONDS:
            user = cached[1]
            plan = await self.bot.services.users.plan(user.plan_id)
            if next_refill_at(user, plan) > utcnow():
                return user
        user = await self.member_user(member)
        self._accounts[member.id] = (now, user)
        return user

    @staticmethod
    def voice_channel(member: discord.Member) -> discord.VoiceChannel | discord.StageChannel:
        state = member.voice
        if state is None or state.channel is None:
            raise PlayerError("Join a voice channel first, then try again.")
        return state.channel

    def _check_cooldown(self, guild_id: int, user_id: int, seconds: float) -> None:
        if seconds <= 0:
            return
        last = self._last_play.get((guild_id, user_id))
        now = time.monotonic()
        if last is not None and now - last < seconds:
            raise PlayerError(f"Slow down: you can play again in {seconds - (now - last):.1f} s.")

    async def request(
        self,
        member: discord.Member,
        sound: Sound,
        *,
        source: str = "play",
        charge: bool = True,
        cooldown: bool = True,
    ) -> PlayResult:
        """Check, charge, connect and queue. Raises a SoundboardError with a member-facing
        message; nothing is charged unless the play was queued (or it is refunded)."""
        guild = member.guild
        services = self.bot.services
        if sound.guild_id not in (None, guild.id):
            raise PlayerError("That sound does not exist in this server.")
        channel = self.voice_channel(member)
        player = self.bot.players.get(guild)
        player.check_channel(channel)
        path, _ = services.sounds.playback_file(sound)
        if not path.exists():
            raise PlayerError(
                f"The file of '{sound.name}' is missing; ask an admin to run /admin scan."
            )
        # Both are cached reads; fetch them side by side, they are on the start-latency path.
        config, user = await asyncio.gather(
            services.guilds.config(guild.id), self._player_account(member)
        )
        if cooldown:
            self._check_cooldown(guild.id, member.id, config.cooldown_seconds)
        player.check_capacity(config.queue_cap)
        play_charge = (
            await services.playback.charge(
                user_id=user.id or 0, sound=sound, guild_id=guild.id, source=source
            )
            if charge
            else None
        )
        try:
            await player.connect(channel)
            position = await player.enqueue(
                QueueItem(
                    sound=sound, charge=play_charge, requested_by=member.id, channel_id=channel.id
                )
            )
        except BaseException as exc:
            if play_charge is not None:
                reason = str(exc) if isinstance(exc, PlayerError) else "playback failed"
                await services.playback.refund(play_charge, reason)
            raise
        if cooldown:
            self._last_play[(guild.id, member.id)] = time.monotonic()
        return PlayResult(position, play_charge, user)

    @staticmethod
    def describe(sound: Sound, result: PlayResult) -> str:
        what = f"**{discord.utils.escape_markdown(sound.name)}** ({sound.duration_ms / 1000:.1f} s)"
        head = (
            f"Playing {what}"
            if result.position == 0
            else (f"Queued {what} at position {result.position}")
        )
        if result.charge is not None and result.charge.balance_after is not None:
            return f"{head} · {result.charge.balance_after} credits left."
        return f"{head}."
