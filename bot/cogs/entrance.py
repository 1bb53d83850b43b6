"""Entrance sounds: /entrance set|clear, played when a member joins a voice channel. Also here,
since it listens to the same events: leaving a voice channel nobody is listening in."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import Interaction, bot_of, member_of, sound_autocomplete
from core.errors import NotFound, SoundboardError

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)

VoiceChannel = discord.VoiceChannel | discord.StageChannel
LEAVE_TIMEOUT = 3.0


def listeners_in(channel: VoiceChannel, bot_user_id: int | None) -> int:
    """Members in `channel` who are not bots, from the voice states. Someone in a voice state
    whose member we don't know counts as a listener: better stay than leave them alone."""
    known = {m.id: m for m in channel.members}
    count = 0
    for user_id in channel.voice_states:
        if user_id == bot_user_id:
            continue
        member = known.get(user_id)
        if member is None or not member.bot:
            count += 1
    return count


def _channel_id(state: discord.VoiceState) -> int | None:
    return state.channel.id if state.channel is not None else None


class EntranceCog(commands.Cog):
    entrance = app_commands.Group(
        name="entrance",
        description="The sound played when you join a voice channel",
        guild_only=True,
    )

    def __init__(self, bot: AnySoundBot) -> None:
        self.bot = bot
        # Voice events of one guild are handled one at a time, in the order they arrived: a
        # leave (the channel emptied) is finished before the next join's entrance connects.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    @entrance.command(name="set")
    @app_commands.describe(sound="The sound to play when you join (start typing to search)")
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def set_entrance(self, interaction: Interaction, sound: str) -> None:
        """Choose the sound played when you join a voice channel here (it costs like /play)."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        services = bot.services
        found = await services.sounds.find(member.guild.id, sound)
        user = await bot.plays.member_user(member)
        await services.guilds.set_entrance(
            user_id=user.id or 0, guild_id=member.guild.id, sound_id=found.id or 0
        )
        text = (
            f"Your entrance sound is now **{discord.utils.escape_markdown(found.name)}**; "
            "it plays when you join a voice channel here."
        )
        if not (await services.guilds.config(member.guild.id)).entrance_sounds_enabled:
            text += " Entrance sounds are turned off in this server at the moment."
        await interaction.response.send_message(text, ephemeral=True)

    @entrance.command(name="clear")
    async def clear_entrance(self, interaction: Interaction) -> None:
        """Stop playing a sound when you join a voice channel here."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        try:
            user = await bot.services.users.get_by_discord_id(member.id)
            cleared = await bot.services.guilds.clear_entrance(
                user_id=user.id or 0, guild_id=member.guild.id
            )
        except NotFound:
            cleared = False
        await interaction.response.send_message(
            "Your entrance sound is cleared." if cleared else "You have no entrance sound here.",
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        if member.bot or _channel_id(before) == _channel_id(after):
            return  # the bot's own moves, mutes and deafens don't matter here
        async with self._locks[member.guild.id]:
            try:
                if before.channel is not None:
                    await self._leave_if_alone(member.guild, before.channel)
                if after.channel is not None:
                    await self._play_entrance(member, after.channel)
            except Exception:
                log.exception(
                    "voice state handling failed guild=%s user=%s", member.guild.id, member.id
                )

    async def _leave_if_alone(self, guild: discord.Guild, left: VoiceChannel) -> None:
        player = self.bot.players.get(guild)
        vc = player.voice
        if vc is None or not vc.is_connected() or vc.channel is None or vc.channel.id != left.id:
            return
        channel = vc.channel
        assert isinstance(channel, discord.VoiceChannel | discord.StageChannel)
        bot_user = self.bot.user
        if listeners_in(channel, bot_user.id if bot_user else None) > 0:
            return
        log.info("voice channel empty, leaving guild=%s channel=%s", guild.id, channel.id)
        try:
            # discord.py waits (up to its connect timeout) for Discord to confirm the leave, and
            # misses a confirmation that arrives while it is still sending: don't hold up this
            # guild's next join for that. The voice client is cleaned up either way.
            await asyncio.wait_for(player.leave(), LEAVE_TIMEOUT)
        except TimeoutError:
            log.warning("leaving voice took over %s s guild=%s", LEAVE_TIMEOUT, guild.id)

    async def _play_entrance(self, member: discord.Member, joined: VoiceChannel) -> None:
        services = self.bot.services
        guild = member.guild
        if not (await services.guilds.config(guild.id)).entrance_sounds_enabled:
            return
        try:
            user = await services.users.get_by_discord_id(member.id)
        except NotFound:
            return  # never used the bot, so no entrance sound
        sound_id = await services.guilds.entrance_of(user_id=user.id or 0, guild_id=guild.id)
        if sound_id is None:
            return
        try:
            sound = await services.sounds.get_for_guild(sound_id, guild.id)
            result = await self.bot.plays.request(member, sound, source="entrance")
        except SoundboardError as exc:
            log.info(
                "entrance not played guild=%s user=%s sound=%s reason=%s",
                guild.id,
                member.id,
                sound_id,
                exc,
            )
            return
        log.info(
            "entrance queued guild=%s user=%s sound=%s channel=%s position=%s",
            guild.id,
            member.id,
            sound_id,
            joined.id,
            result.position,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(EntranceCog(bot))  # type: ignore[arg-type]
