"""Helpers the cogs share: the bot's type, guild-only members, sound autocomplete."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypeAlias

import discord
from discord import app_commands

from bot.errors import GENERIC, NotAllowed, describe, message_for, reply

if TYPE_CHECKING:
    from bot.client import AnySoundBot

    Interaction: TypeAlias = discord.Interaction[AnySoundBot]
else:
    Interaction: TypeAlias = discord.Interaction


log = logging.getLogger(__name__)


def bot_of(interaction: discord.Interaction[Any]) -> AnySoundBot:
    return interaction.client  # type: ignore[no-any-return]


def member_of(interaction: discord.Interaction[Any]) -> discord.Member:
    if not isinstance(interaction.user, discord.Member) or interaction.guild is None:
        raise NotAllowed("This command only works in a server.")
    return interaction.user


def is_manager(interaction: discord.Interaction[Any]) -> bool:
    """Members who can manage the server, and the bot's owners."""
    bot = bot_of(interaction)
    if interaction.user.id in bot.settings.discord_owner_ids:
        return True
    perms = interaction.permissions
    return bool(perms.manage_guild or perms.administrator)


def require_manager(interaction: discord.Interaction[Any]) -> None:
    if not is_manager(interaction):
        raise NotAllowed("Only members who can manage this server can do that.")


async def sound_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """Up to 25 sounds of this server by prefix, then fuzzy match; the value is the id."""
    if interaction.guild_id is None:
        return []
    started = time.perf_counter()
    bot = bot_of(interaction)
    matches = await bot.services.sounds.autocomplete(interaction.guild_id, current)
    bot.services.metrics.autocomplete_seconds.observe(time.perf_counter() - started)
    return [app_commands.Choice(name=name[:100], value=str(ident)) for ident, name in matches]


async def tag_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    tags = await bot_of(interaction).services.sounds.tags(interaction.guild_id)
    low = current.lower()
    return [app_commands.Choice(name=t, value=t) for t in tags if low in t][:25]


async def answer_error(interaction: discord.Interaction[Any], error: BaseException) -> None:
    """For button callbacks, which the command tree's error handler never sees: the same one
    short ephemeral line for an expected error, a log entry and a generic line for a bug."""
    text = message_for(error)
    if text is None:
        log.error("component failed %s", describe(interaction), exc_info=error)
        text = GENERIC
    else:
        log.info("component refused %s reason=%s", describe(interaction), text)
    await reply(interaction, text)
