"""Playing sounds: /play, /random, /stop, /skip, /queue, /leave."""

from __future__ import annotations

import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    Interaction,
    bot_of,
    member_of,
    sound_autocomplete,
    tag_autocomplete,
)
from bot.errors import NotAllowed
from bot.voice.player import PlayerError


class PlayCog(commands.Cog):
    @app_commands.command(name="play")
    @app_commands.guild_only()
    @app_commands.describe(sound="The sound to play (start typing to search)")
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def play(self, interaction: Interaction, sound: str) -> None:
        """Play a sound in your voice channel (queued if something is playing)."""
        started = time.perf_counter()
        bot = bot_of(interaction)
        member = member_of(interaction)
        found = await bot.services.sounds.find(member.guild.id, sound)
        result = await bot.plays.request(member, found)
        bot.services.metrics.play_start_latency.observe(time.perf_counter() - started)
        await interaction.response.send_message(bot.plays.describe(found, result), ephemeral=True)

    @app_commands.command(name="random")
    @app_commands.guild_only()
    @app_commands.describe(tag="Only sounds with this tag")
    @app_commands.autocomplete(tag=tag_autocomplete)
    async def random(self, interaction: Interaction, tag: str | None = None) -> None:
        """Play a random sound, optionally one with a tag."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        found = await bot.services.sounds.random(member.guild.id, tag)
        result = await bot.plays.request(member, found, source="random")
        await interaction.response.send_message(bot.plays.describe(found, result), ephemeral=True)

    @app_commands.command(name="stop")
    @app_commands.guild_only()
    async def stop(self, interaction: Interaction) -> None:
        """Stop the sound that is playing and clear the queue."""
        player = self._player_in_my_channel(interaction)
        dropped = player.stop()
        extra = f" and cleared {len(dropped)} queued" if dropped else ""
        await interaction.response.send_message(f"Stopped{extra}.", ephemeral=True)

    @app_commands.command(name="skip")
    @app_commands.guild_only()
    async def skip(self, interaction: Interaction) -> None:
        """Skip the sound that is playing."""
        player = self._player_in_my_channel(interaction)
        skipped = player.skip()
        if skipped is None:
            raise PlayerError("Nothing is playing.")
        await interaction.response.send_message(
            f"Skipped **{discord.utils.escape_markdown(skipped.sound.name)}**.", ephemeral=True
        )

    @app_commands.command(name="queue")
    @app_commands.guild_only()
    async def queue(self, interaction: Interaction) -> None:
        """Show what is playing and what is queued."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        player = bot.players.existing(member.guild.id)
        if player is None or not player.busy:
            await interaction.response.send_message("Nothing is playing.", ephemeral=True)
            return
        lines = []
        if player.current is not None:
            lines.append(
                f"▶ **{discord.utils.escape_markdown(player.current.sound.name)}** "
                f"(<@{player.current.requested_by}>)"
            )
        for n, item in enumerate(list(player.queue)[:20], start=1):
            lines.append(
                f"{n}. {discord.utils.escape_markdown(item.sound.name)} (<@{item.requested_by}>)"
            )
        if len(player.queue) > 20:
            lines.append(f"…and {len(player.queue) - 20} more")
        await interaction.response.send_message(
            "\n".join(lines), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="leave")
    @app_commands.guild_only()
    async def leave(self, interaction: Interaction) -> None:
        """Make the bot leave the voice channel."""
        player = self._player_in_my_channel(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await player.leave()
        await interaction.followup.send("Left the voice channel.", ephemeral=True)

    @staticmethod
    def _player_in_my_channel(interaction: Interaction):  # type: ignore[no-untyped-def]
        bot = bot_of(interaction)
        member = member_of(interaction)
        player = bot.players.existing(member.guild.id)
        vc = player.voice if player else None
        if player is None or vc is None or not vc.is_connected():
            raise PlayerError("I'm not in a voice channel.")
        in_channel = member.voice is not None and member.voice.channel == vc.channel
        perms = interaction.permissions
        if not in_channel and not (perms.manage_guild or perms.move_members):
            raise NotAllowed("Join my voice channel to control playback.")
        return player


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(PlayCog())
