"""/panel: a channel message of sound buttons that anyone can click to play.

The buttons carry everything they need in their custom ids (``sb:play:<sound id>``,
``sb:panel:<page>:<tag>``) and are registered as dynamic items, so a panel posted before a
restart keeps working afterwards."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import Interaction, answer_error, bot_of, member_of, tag_autocomplete
from core.errors import NotFound
from core.services.sounds import clean_tags

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)

PER_ROW = 5
SOUND_ROWS = 4
PER_PAGE = PER_ROW * SOUND_ROWS  # 20 sound buttons + 1 row of page arrows = 25 components
LABEL_MAX = 80  # Discord's limit for a button label

PLAY_TEMPLATE = r"sb:play:(?P<sound_id>\d+)"
PAGE_TEMPLATE = r"sb:panel:(?P<page>\d+):(?P<tag>[a-z0-9_-]*)"


def _label(name: str) -> str:
    return name if len(name) <= LABEL_MAX else name[: LABEL_MAX - 1] + "…"


class PanelSoundButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=PLAY_TEMPLATE
):
    """Plays its sound in the clicker's voice channel, charged like /play."""

    def __init__(self, sound_id: int, name: str = "sound", *, row: int | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=_label(name),
                style=discord.ButtonStyle.secondary,
                custom_id=f"sb:play:{sound_id}",
                row=row,
            )
        )
        self.sound_id = sound_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> PanelSoundButton:
        label = item.label if isinstance(item, discord.ui.Button) else None
        return cls(int(match["sound_id"]), label or "sound")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self._play(interaction)
        except Exception as exc:
            await answer_error(interaction, exc)

    async def _play(self, interaction: Interaction) -> None:
        started = time.perf_counter()
        bot = bot_of(interaction)
        member = member_of(interaction)
        try:
            sound = await bot.services.sounds.get(self.sound_id)
        except NotFound:
            raise NotFound("That sound was deleted.") from None
        if sound.guild_id not in (None, member.guild.id):
            raise NotFound("That sound does not exist in this server.")
        result = await bot.plays.request(member, sound, source="panel")
        bot.services.metrics.play_start_latency.observe(time.perf_counter() - started)
        await interaction.response.send_message(bot.plays.describe(sound, result), ephemeral=True)


class PanelPageButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=PAGE_TEMPLATE
):
    """◀ and ▶ turn the panel to another page; the middle "page x/y" is a disabled label."""

    def __init__(self, page: int, tag: str, *, label: str = "page", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.primary,
                custom_id=f"sb:panel:{page}:{tag}",
                disabled=disabled,
                row=SOUND_ROWS,
            )
        )
        self.page = page
        self.tag = tag

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> PanelPageButton:
        return cls(int(match["page"]), match["tag"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            member = member_of(interaction)
            content, view = await render_panel(
                bot_of(interaction), member.guild.id, self.tag, self.page
            )
            await interaction.response.edit_message(
                content=content, view=view, allowed_mentions=discord.AllowedMentions.none()
            )
        except Exception as exc:
            await answer_error(interaction, exc)


def panel_tag(tag: str | None) -> str:
    """'' for every sound, else one valid tag (it has to fit in the buttons' custom ids)."""
    cleaned = clean_tags([tag or ""])
    return cleaned[0] if cleaned else ""


async def render_panel(
    bot: AnySoundBot, guild_id: int, tag: str, page: int
) -> tuple[str, discord.ui.View]:
    """The panel's text and buttons for `page` (1-based, clamped to the pages there are)."""
    names = await bot.services.sounds.names(guild_id, tag=tag or None)
    if not names:
        raise NotFound(
            f"No sound here has the tag '{tag}'." if tag else "There are no sounds here yet."
        )
    pages = math.ceil(len(names) / PER_PAGE)
    page = min(max(page, 1), pages)
    view = discord.ui.View(timeout=None)
    chunk = names[(page - 1) * PER_PAGE : page * PER_PAGE]
    for n, (ident, name) in enumerate(chunk):
        view.add_item(PanelSoundButton(ident, name, row=n // PER_ROW))
    if pages > 1:
        # Unique custom ids: the arrows point at page-1 and page+1 (disabled at the ends).
        view.add_item(PanelPageButton(page - 1, tag, label="◀", disabled=page == 1))
        view.add_item(PanelPageButton(page, tag, label=f"page {page}/{pages}", disabled=True))
        view.add_item(PanelPageButton(page + 1, tag, label="▶", disabled=page == pages))
    what = f"sounds tagged `{tag}`" if tag else "sounds"
    count = "1 sound" if len(names) == 1 else f"{len(names)} sounds"
    content = (
        f"🔊 **Soundboard** · {what} · {count}\nClick a sound to play it in your voice channel."
    )
    return content, view


class PanelCog(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(PanelSoundButton, PanelPageButton)

    @app_commands.command(name="panel")
    @app_commands.guild_only()
    @app_commands.describe(tag="Only sounds with this tag")
    @app_commands.autocomplete(tag=tag_autocomplete)
    async def panel(self, interaction: Interaction, tag: str | None = None) -> None:
        """Post a soundboard: buttons anyone can click to play sounds in their voice channel."""
        member = member_of(interaction)
        clean = panel_tag(tag)
        content, view = await render_panel(bot_of(interaction), member.guild.id, clean, 1)
        await interaction.response.send_message(
            content, view=view, allowed_mentions=discord.AllowedMentions.none()
        )
        log.info(
            "panel posted guild=%s channel=%s tag=%r",
            member.guild.id,
            interaction.channel_id,
            clean,
        )


async def setup(bot: commands.Bot) -> None:
    # Registered on the bot (not on a view) so that clicks on panels posted before a restart
    # are still understood.
    bot.add_dynamic_items(PanelSoundButton, PanelPageButton)
    await bot.add_cog(PanelCog(bot))
