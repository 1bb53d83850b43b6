"""The sound library: /sounds, /upload and /sound info|rename|delete|tag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import uuid
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    Interaction,
    answer_error,
    bot_of,
    is_manager,
    member_of,
    sound_autocomplete,
    tag_autocomplete,
)
from bot.errors import NotAllowed
from core.errors import Conflict, InvalidInput, NotFound, SoundboardError
from core.models import Sound
from core.repositories.base import Page
from core.services.sounds import clean_name, clean_tags, human_size
from core.storage import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)

PAGE_SIZE = 10
PAGER_TIMEOUT = 300.0
UPLOAD_PREFIX = "upload-"


def _bold(name: str) -> str:
    return f"**{discord.utils.escape_markdown(name)}**"


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


def _plays(count: int) -> str:
    return "1 play" if count == 1 else f"{count} plays"


class SoundsPager(discord.ui.View):
    """Previous/Next over keyset pages; the cursors of the pages seen so far lead back."""

    def __init__(
        self,
        *,
        owner_id: int,
        guild_id: int,
        search: str | None,
        tag: str | None,
        first: Page[Sound],
    ) -> None:
        super().__init__(timeout=PAGER_TIMEOUT)
        self.owner_id = owner_id
        self.guild_id = guild_id
        self.search = search
        self.tag = tag
        self.page = first
        self.cursors: list[str | None] = [None]  # the cursor that loads each page seen
        self.origin: Interaction | None = None
        self._sync_buttons()

    @property
    def number(self) -> int:
        return len(self.cursors)

    def embed(self) -> discord.Embed:
        filters = []
        if self.search:
            filters.append(f"matching “{discord.utils.escape_markdown(self.search)}”")
        if self.tag:
            filters.append(f"tagged `{self.tag}`")
        title = "Sounds" + (" " + " and ".join(filters) if filters else "")
        start = (self.number - 1) * PAGE_SIZE + 1
        lines = [
            f"{n}. {_bold(s.name)} · {_seconds(s.duration_ms)} · {_plays(s.play_count)}"
            for n, s in enumerate(self.page.items, start=start)
        ]
        embed = discord.Embed(title=title, description="\n".join(lines) or "No more sounds.")
        embed.set_footer(text=f"Page {self.number}")
        return embed

    def _sync_buttons(self) -> None:
        self.previous_page.disabled = self.number <= 1
        self.next_page.disabled = self.page.next_cursor is None

    async def _load(self, cursor: str | None, interaction: Interaction) -> Page[Sound]:
        return await bot_of(interaction).services.sounds.list_page(
            guild_id=self.guild_id,
            search=self.search,
            tag=self.tag,
            cursor=cursor,
            limit=PAGE_SIZE,
        )

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message(
            "Only the member who ran /sounds can turn its pages; run /sounds yourself.",
            ephemeral=True,
        )
        return False

    @discord.ui.button(label="◀ Previous", style=discord.ButtonStyle.secondary)
    async def previous_page(self, interaction: Interaction, button: discord.ui.Button[Any]) -> None:
        if self.number > 1:
            page = await self._load(self.cursors[-2], interaction)
            self.cursors.pop()
            self.page = page
        self._sync_buttons()
        await interaction.response.edit_message(embed=self.embed(), view=self)

    @discord.ui.button(label="Next ▶", style=discord.ButtonStyle.secondary)
    async def next_page(self, interaction: Interaction, button: discord.ui.Button[Any]) -> None:
        cursor = self.page.next_cursor
        if cursor is not None:
            page = await self._load(cursor, interaction)
            self.cursors.append(cursor)
            self.page = page
        self._sync_buttons()
        await interaction.response.edit_message(embed=self.embed(), view=self)

    async def on_error(
        self, interaction: discord.Interaction[Any], error: Exception, item: discord.ui.Item[Any], /
    ) -> None:
        await answer_error(interaction, error)

    async def on_timeout(self) -> None:
        for child in self.children:
            if isinstance(child, discord.ui.Button):
                child.disabled = True
        if self.origin is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.origin.edit_original_response(view=self)


def upload_suffix(file: discord.Attachment) -> str:
    """The extension to store the upload under; refuses what is plainly not audio."""
    suffix = Path(file.filename).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return suffix
    content_type = (file.content_type or "").split(";")[0].strip().lower()
    if content_type.startswith("audio/"):
        guessed = mimetypes.guess_extension(content_type) or ""
        return guessed if guessed in AUDIO_EXTENSIONS else ".bin"
    kinds = ", ".join(sorted(ext.lstrip(".") for ext in AUDIO_EXTENSIONS))
    raise InvalidInput(f"That doesn't look like an audio file; upload one of: {kinds}.")


class LibraryCog(commands.Cog):
    sound = app_commands.Group(
        name="sound", description="Look at or change one sound", guild_only=True
    )

    # ----- /sounds ------------------------------------------------------------------------

    @app_commands.command(name="sounds")
    @app_commands.guild_only()
    @app_commands.describe(
        search="Only sounds whose name contains this", tag="Only sounds with this tag"
    )
    @app_commands.autocomplete(tag=tag_autocomplete)
    async def sounds(
        self, interaction: Interaction, search: str | None = None, tag: str | None = None
    ) -> None:
        """List this server's sounds, 10 per page."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        search = (search or "").strip()[:100] or None
        tag = (tag or "").strip().lower() or None
        first = await bot.services.sounds.list_page(
            guild_id=member.guild.id, search=search, tag=tag, limit=PAGE_SIZE
        )
        if not first.items:
            if search or tag:
                raise NotFound("No sound matches that.")
            raise NotFound("There are no sounds here yet; add one with /upload.")
        pager = SoundsPager(
            owner_id=member.id, guild_id=member.guild.id, search=search, tag=tag, first=first
        )
        await interaction.response.send_message(embed=pager.embed(), view=pager)
        pager.origin = interaction

    # ----- /upload ------------------------------------------------------------------------

    @app_commands.command(name="upload")
    @app_commands.guild_only()
    @app_commands.describe(
        name="The sound's name (up to 100 characters)",
        file="The audio file (mp3, wav, ogg, opus, flac, m4a, aac or webm)",
        tags="Comma-separated tags, e.g. funny, meme",
    )
    async def upload(
        self,
        interaction: Interaction,
        name: str,
        file: discord.Attachment,
        tags: str | None = None,
    ) -> None:
        """Add an audio file to this server's sounds."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self._check_upload_allowed(interaction, member)
        name = clean_name(name)
        clean_tags(tags)  # refuse bad tags before downloading anything
        suffix = upload_suffix(file)
        limit = bot.settings.sound_max_bytes
        if file.size > limit:
            raise InvalidInput(
                f"The file is too big ({human_size(file.size)}; the limit is {human_size(limit)})."
            )
        uploader = await bot.plays.member_user(member)
        temp_dir = bot.services.storage.temp
        path = temp_dir / f"{UPLOAD_PREFIX}{uuid.uuid4().hex}{suffix}"
        try:
            try:
                data = await file.read()
            except discord.HTTPException as exc:
                log.warning("upload download failed guild=%s error=%s", member.guild.id, exc)
                raise SoundboardError("I couldn't download that file; please try again.") from exc
            if len(data) > limit:
                raise InvalidInput(
                    f"The file is too big ({human_size(len(data))}; the limit is "
                    f"{human_size(limit)})."
                )
            await asyncio.to_thread(temp_dir.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(path.write_bytes, data)
            result = await bot.services.sounds.add_file(
                path, name=name, guild_id=member.guild.id, tags=tags, uploader_id=uploader.id
            )
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if not result.created:
            raise Conflict(result.message)
        sound = result.sound
        text = f"Added {_bold(sound.name)} ({_seconds(sound.duration_ms)})."
        if result.normalize_error:
            text += " I couldn't even out its loudness, so it plays as uploaded."
        log.info(
            "sound uploaded guild=%s sound=%s user=%s size=%s",
            member.guild.id,
            sound.id,
            member.id,
            len(data),
        )
        await interaction.edit_original_response(content=text)

    @staticmethod
    async def _check_upload_allowed(interaction: Interaction, member: discord.Member) -> None:
        config = await bot_of(interaction).services.guilds.config(member.guild.id)
        role_id = config.upload_role_id
        if role_id is None or is_manager(interaction) or member.get_role(role_id) is not None:
            return
        role = member.guild.get_role(role_id)
        which = (
            f"the {discord.utils.escape_markdown(role.name)} role" if role else "the upload role"
        )
        raise NotAllowed(f"Only members with {which} can upload sounds here.")

    # ----- /sound ... ---------------------------------------------------------------------

    @sound.command(name="info")
    @app_commands.describe(sound="The sound (start typing to search)")
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def info(self, interaction: Interaction, sound: str) -> None:
        """Show a sound's details: duration, plays, tags, uploader."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        found = await bot.services.sounds.find(member.guild.id, sound)
        view = (await bot.services.sounds.views([found]))[0]
        uploader = "—"
        if found.uploader_id is not None:
            with contextlib.suppress(NotFound):
                user = await bot.services.users.get(found.uploader_id)
                uploader = (
                    f"<@{user.discord_id}>"
                    if user.discord_id is not None
                    else discord.utils.escape_markdown(user.display_name)
                )
        normalized = "yes" if found.is_normalized else "no"
        if not found.is_normalized and found.normalize_error:
            normalized += f" ({found.normalize_error[:200]})"
        embed = discord.Embed(title=found.name)
        embed.add_field(name="ID", value=str(found.id))
        embed.add_field(name="Duration", value=_seconds(found.duration_ms))
        embed.add_field(name="Plays", value=str(found.play_count))
        embed.add_field(name="Tags", value=", ".join(view.tags) or "—")
        embed.add_field(name="Uploader", value=uploader)
        embed.add_field(name="Normalized", value=normalized)
        if found.guild_id is None:
            embed.set_footer(text="From the shared library")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @sound.command(name="rename")
    @app_commands.describe(sound="The sound (start typing to search)", name="Its new name")
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def rename(self, interaction: Interaction, sound: str, name: str) -> None:
        """Rename a sound you uploaded."""
        found = await self._editable(interaction, sound)
        old = found.name
        renamed = await bot_of(interaction).services.sounds.rename(found.id or 0, name)
        await interaction.response.send_message(
            f"Renamed {_bold(old)} to {_bold(renamed.name)}.", ephemeral=True
        )

    @sound.command(name="delete")
    @app_commands.describe(sound="The sound (start typing to search)")
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def delete(self, interaction: Interaction, sound: str) -> None:
        """Delete a sound you uploaded."""
        found = await self._editable(interaction, sound)
        deleted = await bot_of(interaction).services.sounds.delete(found.id or 0)
        log.info(
            "sound deleted by member guild=%s sound=%s user=%s",
            interaction.guild_id,
            deleted.id,
            interaction.user.id,
        )
        await interaction.response.send_message(f"Deleted {_bold(deleted.name)}.", ephemeral=True)

    @sound.command(name="tag")
    @app_commands.describe(
        sound="The sound (start typing to search)",
        tags="Comma-separated tags (they replace the current ones); leave out to remove all",
    )
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def tag(self, interaction: Interaction, sound: str, tags: str | None = None) -> None:
        """Set the tags of a sound you uploaded."""
        found = await self._editable(interaction, sound)
        cleaned = await bot_of(interaction).services.sounds.set_tags(found.id or 0, tags or "")
        text = (
            f"Tags of {_bold(found.name)}: " + ", ".join(f"`{t}`" for t in cleaned) + "."
            if cleaned
            else f"Removed all tags from {_bold(found.name)}."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @staticmethod
    async def _editable(interaction: Interaction, value: str) -> Sound:
        """The sound, if this member may change it: its uploader or a manager of the server
        (the shared library's sounds only by the bot's owners)."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        found = await bot.services.sounds.find(member.guild.id, value)
        if found.guild_id is None:
            if member.id in bot.settings.discord_owner_ids:
                return found
            raise NotAllowed(
                "Sounds of the shared library can only be changed by the bot's owners."
            )
        if is_manager(interaction):
            return found
        if found.uploader_id is not None:
            with contextlib.suppress(NotFound):
                user = await bot.services.users.get_by_discord_id(member.id)
                if user.id == found.uploader_id:
                    return found
        raise NotAllowed(
            "Only the member who uploaded this sound or members who can manage this server "
            "can change it."
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(LibraryCog())
