"""One cog per feature."""

from __future__ import annotations

import importlib
import logging

from discord.ext import commands

log = logging.getLogger(__name__)

COGS = (
    "bot.cogs.play",
    "bot.cogs.library",
    "bot.cogs.panel",
    "bot.cogs.playlists",
    "bot.cogs.credits",
    "bot.cogs.entrance",
    "bot.cogs.admin",
    "bot.cogs.extraction",
    "bot.cogs.remote",
)


async def load_all(bot: commands.Bot) -> None:
    for name in COGS:
        module = importlib.import_module(name)
        await module.setup(bot)
        log.debug("cog loaded %s", name)
