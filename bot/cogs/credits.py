"""Credits and statistics: /credits [member] and /stats."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import Interaction, bot_of, is_manager, member_of
from bot.errors import NotAllowed
from bot.playback import avatar_of
from core.errors import NotFound
from core.models import CreditTransaction, User

log = logging.getLogger(__name__)

RECENT = 5
COLOUR = discord.Colour.blurple()

_ACTIONS = {
    "signup": "welcome credits",
    "refill": "refill",
    "play": "play",
    "extraction": "extraction",
    "refund": "refund",
    "grant": "granted",
    "take": "taken",
}


def describe_transaction(row: CreditTransaction) -> str:
    """One ledger row as a short line: `+100 refill · 2 h ago`."""
    label = _ACTIONS.get(row.action, row.action)
    meta = row.meta or {}
    detail = meta.get("sound") if row.action == "play" else meta.get("reason")
    if detail:
        label += f" · {discord.utils.escape_markdown(str(detail))[:60]}"
    when = discord.utils.format_dt(row.created_at, "R")
    return f"`{row.amount:+d}` {label} · {when}"


def _who(discord_id: int | None, name: str) -> str:
    return f"<@{discord_id}>" if discord_id else discord.utils.escape_markdown(name)


class CreditsCog(commands.Cog):
    @app_commands.command(name="credits")
    @app_commands.guild_only()
    @app_commands.describe(member="Whose credits to show (managers only; default: yours)")
    async def credits(self, interaction: Interaction, member: discord.Member | None = None) -> None:
        """Show your credits, plan, next refill and latest transactions."""
        bot = bot_of(interaction)
        services = bot.services
        me = member_of(interaction)
        target = member or me
        if target.id != me.id:
            if not is_manager(interaction):
                raise NotAllowed("You can only see your own credits.")
            user = await self._existing_user(interaction, target)
        else:
            user = await bot.plays.member_user(me)
        summary = await services.users.summary(user.id or 0)
        history = await services.credits.history(user.id or 0, limit=RECENT)
        title = "Your credits" if target.id == me.id else f"Credits of {target.display_name}"
        plan = summary.plan
        embed = discord.Embed(
            title=title,
            description=(
                f"**{summary.user.credits}** credits · {discord.utils.escape_markdown(plan.name)} "
                f"plan (holds up to {plan.max_credits})"
            ),
            colour=COLOUR,
        )
        embed.add_field(
            name="Next refill",
            value=(
                f"+{plan.credits_per_refill} every {plan.refill_period_hours} h, next "
                f"{discord.utils.format_dt(summary.next_refill_at, 'R')}"
                if summary.user.credits < plan.max_credits
                else f"Full; refills resume below {plan.max_credits}"
            ),
            inline=False,
        )
        embed.add_field(
            name="Recent",
            value="\n".join(describe_transaction(row) for row in history.items)
            or "No transactions yet.",
            inline=False,
        )
        embed.set_thumbnail(url=avatar_of(target))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @staticmethod
    async def _existing_user(interaction: Interaction, target: discord.Member) -> User:
        """Another member's account, refilled if due; never created just by looking."""
        services = bot_of(interaction).services
        try:
            user = await services.users.get_by_discord_id(target.id)
        except NotFound:
            raise NotFound(f"{target.display_name} hasn't used the soundboard yet.") from None
        await services.credits.refill_if_due(user.id or 0)
        return user

    @app_commands.command(name="stats")
    @app_commands.guild_only()
    async def stats(self, interaction: Interaction) -> None:
        """The most played sounds and the most active members of the last 7 days."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        stats = await bot.services.sounds.stats(member.guild.id, days=7)
        embed = discord.Embed(title=f"This week in {member.guild.name}", colour=COLOUR)
        if not stats.top_sounds:
            embed.description = "Nothing has been played here in the last 7 days."
        else:
            embed.add_field(
                name="Most played",
                value="\n".join(
                    f"{n}. {discord.utils.escape_markdown(name)} · {count} "
                    f"play{'s' if count != 1 else ''}"
                    for n, (name, count) in enumerate(stats.top_sounds, start=1)
                ),
                inline=True,
            )
            embed.add_field(
                name="Most active",
                value="\n".join(
                    f"{n}. {_who(discord_id, name)} · {count} play{'s' if count != 1 else ''}"
                    for n, (discord_id, name, count) in enumerate(stats.top_members, start=1)
                )
                or "Nobody yet.",
                inline=True,
            )
        await interaction.response.send_message(
            embed=embed, allowed_mentions=discord.AllowedMentions.none()
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(CreditsCog())
