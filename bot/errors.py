"""Errors never reach members as tracebacks: they get one short ephemeral line, we get a log."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from core.errors import SoundboardError

log = logging.getLogger(__name__)

GENERIC = "Something went wrong on my side. It has been logged; please try again."


class NotAllowed(app_commands.CheckFailure):
    """A check failed; the message is shown to the member."""


def describe(interaction: discord.Interaction[Any]) -> str:
    command = interaction.command.qualified_name if interaction.command else "-"
    return (
        f"guild={interaction.guild_id} user={interaction.user.id} command={command} "
        f"interaction={interaction.id}"
    )


async def reply(
    interaction: discord.Interaction[Any], text: str, *, ephemeral: bool = True
) -> None:
    """Answer an interaction whether or not it was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=ephemeral)
        else:
            await interaction.response.send_message(text, ephemeral=ephemeral)
    except discord.HTTPException:
        log.warning("could not reply %s", describe(interaction))


def message_for(error: BaseException) -> str | None:
    """The line a member sees for an expected error, or None for a bug."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, SoundboardError):
        return str(error)
    if isinstance(error, NotAllowed):
        return str(error)
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.1f} s."
    if isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
        return "You don't have permission to do that."
    if isinstance(error, app_commands.TransformerError):
        return f"I couldn't understand {error.value!r}."
    return None


def install_error_handler(bot: commands.Bot) -> None:
    async def on_app_command_error(
        interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        text = message_for(error)
        if text is None:
            original = getattr(error, "original", error)
            log.error("command failed %s", describe(interaction), exc_info=original)
            text = GENERIC
        else:
            log.info("command refused %s reason=%s", describe(interaction), text)
        await reply(interaction, text)

    bot.tree.on_error = on_app_command_error  # type: ignore[method-assign]
