"""A member's own playlists in a server: /playlist create|add|remove|move|show|list|delete|play."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import Interaction, bot_of, member_of, sound_autocomplete
from core.errors import InvalidInput, NotFound, SoundboardError
from core.models import Sound
from core.services.playlists import PlaylistView

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 1900


def _name(text: str) -> str:
    return discord.utils.escape_markdown(text)


def _seconds(sounds: list[Sound]) -> str:
    return f"{sum(s.duration_ms for s in sounds) / 1000:.1f} s"


def render_playlist(view: PlaylistView) -> str:
    """The playlist as a numbered list, cut to fit one message."""
    count = len(view.sounds)
    head = (
        f"**{_name(view.playlist.name)}** · {count} sound{'s' if count != 1 else ''}"
        f" · {_seconds(view.sounds)}"
    )
    if not view.sounds:
        return f"{head}\nIt's empty: add sounds with `/playlist add`."
    lines = [head]
    used = len(head)
    for n, sound in enumerate(view.sounds, start=1):
        line = f"{n}. {_name(sound.name)} ({sound.duration_ms / 1000:.1f} s)"
        if used + len(line) + 40 > MESSAGE_LIMIT:
            lines.append(f"…and {count - n + 1} more")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


async def playlist_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """The member's own playlists in this server whose name contains what they typed."""
    if interaction.guild_id is None:
        return []
    services = bot_of(interaction).services
    try:
        user = await services.users.get_by_discord_id(interaction.user.id)
    except NotFound:
        return []
    names = await services.playlists.names(user_id=user.id or 0, guild_id=interaction.guild_id)
    low = current.strip().lower()
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names if low in n.lower()][
        :25
    ]


class PlaylistCog(commands.Cog):
    playlist = app_commands.Group(
        name="playlist", description="Your own playlists of sounds", guild_only=True
    )

    @staticmethod
    async def _owner(interaction: Interaction) -> tuple[discord.Member, int]:
        member = member_of(interaction)
        user = await bot_of(interaction).plays.member_user(member)
        return member, user.id or 0

    @playlist.command(name="create")
    @app_commands.describe(name="A name for the new playlist")
    async def create(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        """Create an empty playlist."""
        member, user_id = await self._owner(interaction)
        playlist = await bot_of(interaction).services.playlists.create(
            user_id=user_id, guild_id=member.guild.id, name=name
        )
        await interaction.response.send_message(
            f"Created **{_name(playlist.name)}**. Add sounds with `/playlist add`.", ephemeral=True
        )

    @playlist.command(name="add")
    @app_commands.describe(playlist="One of your playlists", sound="The sound to add at the end")
    @app_commands.autocomplete(playlist=playlist_autocomplete, sound=sound_autocomplete)
    async def add(self, interaction: Interaction, playlist: str, sound: str) -> None:
        """Add a sound at the end of one of your playlists."""
        member, user_id = await self._owner(interaction)
        services = bot_of(interaction).services
        found = await services.sounds.find(member.guild.id, sound)
        view = await services.playlists.add(
            user_id=user_id, guild_id=member.guild.id, name=playlist, sound=found
        )
        await interaction.response.send_message(
            f"Added **{_name(found.name)}** to **{_name(view.playlist.name)}** "
            f"at position {len(view.sounds)}.",
            ephemeral=True,
        )

    @playlist.command(name="remove")
    @app_commands.describe(playlist="One of your playlists", position="The position to remove")
    @app_commands.autocomplete(playlist=playlist_autocomplete)
    async def remove(
        self, interaction: Interaction, playlist: str, position: app_commands.Range[int, 1, 1000]
    ) -> None:
        """Remove the sound at a position from one of your playlists."""
        member, user_id = await self._owner(interaction)
        removed = await bot_of(interaction).services.playlists.remove(
            user_id=user_id, guild_id=member.guild.id, name=playlist, position=position
        )
        await interaction.response.send_message(
            f"Removed **{_name(removed.name)}** (position {position}) from **{_name(playlist)}**.",
            ephemeral=True,
        )

    @playlist.command(name="move")
    @app_commands.rename(from_position="from", to_position="to")
    @app_commands.describe(
        playlist="One of your playlists",
        from_position="The position of the sound to move",
        to_position="Its new position",
    )
    @app_commands.autocomplete(playlist=playlist_autocomplete)
    async def move(
        self,
        interaction: Interaction,
        playlist: str,
        from_position: app_commands.Range[int, 1, 1000],
        to_position: app_commands.Range[int, 1, 1000],
    ) -> None:
        """Move a sound to another position in one of your playlists."""
        member, user_id = await self._owner(interaction)
        view = await bot_of(interaction).services.playlists.move(
            user_id=user_id,
            guild_id=member.guild.id,
            name=playlist,
            from_position=from_position,
            to_position=to_position,
        )
        await interaction.response.send_message(render_playlist(view), ephemeral=True)

    @playlist.command(name="show")
    @app_commands.describe(playlist="One of your playlists")
    @app_commands.autocomplete(playlist=playlist_autocomplete)
    async def show(self, interaction: Interaction, playlist: str) -> None:
        """Show the sounds of one of your playlists, in order."""
        member, user_id = await self._owner(interaction)
        view = await bot_of(interaction).services.playlists.get(
            user_id=user_id, guild_id=member.guild.id, name=playlist
        )
        await interaction.response.send_message(render_playlist(view), ephemeral=True)

    @playlist.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """List your playlists in this server."""
        member, user_id = await self._owner(interaction)
        views = await bot_of(interaction).services.playlists.list_all(
            user_id=user_id, guild_id=member.guild.id
        )
        if not views:
            text = "You have no playlists here yet; create one with `/playlist create`."
        else:
            text = "\n".join(
                f"**{_name(v.playlist.name)}** · {len(v.sounds)} sound"
                f"{'s' if len(v.sounds) != 1 else ''} · {_seconds(v.sounds)}"
                for v in views
            )
        await interaction.response.send_message(text, ephemeral=True)

    @playlist.command(name="delete")
    @app_commands.describe(playlist="The playlist to delete (its sounds stay in the library)")
    @app_commands.autocomplete(playlist=playlist_autocomplete)
    async def delete(self, interaction: Interaction, playlist: str) -> None:
        """Delete one of your playlists."""
        member, user_id = await self._owner(interaction)
        await bot_of(interaction).services.playlists.delete(
            user_id=user_id, guild_id=member.guild.id, name=playlist
        )
        await interaction.response.send_message(
            f"Deleted the playlist **{_name(playlist)}**.", ephemeral=True
        )

    @playlist.command(name="play")
    @app_commands.describe(playlist="One of your playlists")
    @app_commands.autocomplete(playlist=playlist_autocomplete)
    async def play(self, interaction: Interaction, playlist: str) -> None:
        """Queue every sound of one of your playlists, in order (each costs like /play)."""
        bot = bot_of(interaction)
        member, user_id = await self._owner(interaction)
        view = await bot.services.playlists.get(
            user_id=user_id, guild_id=member.guild.id, name=playlist
        )
        if not view.sounds:
            raise InvalidInput(
                f"**{_name(view.playlist.name)}** is empty: add sounds with `/playlist add`."
            )
        bot.plays.voice_channel(member)  # refuse early, before thinking
        await interaction.response.defer(ephemeral=True, thinking=True)
        queued = 0
        balance: int | None = None
        stopped: str | None = None
        for sound in view.sounds:
            try:
                result = await bot.plays.request(member, sound, source="playlist", cooldown=False)
            except SoundboardError as exc:
                if queued == 0:
                    raise
                stopped = str(exc)
                break
            queued += 1
            if result.charge is not None and result.charge.balance_after is not None:
                balance = result.charge.balance_after
        total = len(view.sounds)
        name = _name(view.playlist.name)
        log.info(
            "playlist queued guild=%s user=%s playlist=%s queued=%s of=%s",
            member.guild.id,
            member.id,
            view.playlist.id,
            queued,
            total,
        )
        if stopped is not None:
            text = f"Queued {queued} of {total} sounds from **{name}**, then stopped: {stopped}"
        else:
            text = f"Queued {total} sound{'s' if total != 1 else ''} from **{name}**"
            text += f" · {balance} credits left." if balance is not None else "."
        await interaction.followup.send(text, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(PlaylistCog())
