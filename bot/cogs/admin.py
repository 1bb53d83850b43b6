"""/admin: library scans, normalizing, credits, plans and server settings. Discord shows the
group to members who can manage the server; the cog checks again on every use, so changed
command permissions never open it to anyone else (bot owners may always use it)."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    Interaction,
    bot_of,
    is_manager,
    member_of,
    require_manager,
    sound_autocomplete,
)
from core.errors import InsufficientCredits, InvalidInput, NotFound
from core.models import Plan, SoundType
from core.services.guilds import GuildConfig
from core.services.normalizer import NormalizeOutcome
from core.services.scanner import ScanReport

log = logging.getLogger(__name__)

MAX_AMOUNT = 1_000_000
LISTED = 5  # problems listed by name in a report
NO_MENTIONS = discord.AllowedMentions.none()

SOUND_TYPES = [
    app_commands.Choice(name="uploaded", value=SoundType.SDB.value),
    app_commands.Choice(name="text to speech", value=SoundType.TTS.value),
    app_commands.Choice(name="extracted", value=SoundType.EXT.value),
]

# reset choice -> the values guilds.update() gets
RESETS: dict[str, dict[str, object]] = {
    "play_cost": {"play_cost": None},
    "cooldown": {"cooldown_seconds": None},
    "queue_cap": {"queue_cap": None},
    "idle_timeout": {"idle_timeout_seconds": None},
    "entrance_sounds": {"entrance_sounds_enabled": True},
    "upload_role": {"upload_role_id": None},
}
RESETS["everything"] = {k: v for values in RESETS.values() for k, v in values.items()}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _problems(items: list[tuple[str, str]]) -> str:
    lines = [f"• {discord.utils.escape_markdown(f)}: {r}" for f, r in items[:LISTED]]
    if len(items) > LISTED:
        lines.append(f"• …and {len(items) - LISTED} more (see the log)")
    return "\n".join(lines)


def describe_scan(report: ScanReport) -> str:
    text = (
        f"Scan done in {report.seconds:.1f} s: {len(report.added)} added, "
        f"{len(report.updated)} updated, {len(report.deleted)} removed, "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped."
    )
    if report.skipped:
        text += f"\nSkipped:\n{_problems(report.skipped)}"
    if report.normalize_failed:
        text += f"\nCould not normalize:\n{_problems(report.normalize_failed)}"
    return text


def describe_normalize(outcomes: list[NormalizeOutcome]) -> str:
    done = [o for o in outcomes if o.result is not None and o.error is None]
    failed = [(o.name, str(o.error)) for o in outcomes if o.error is not None]
    skipped = len(outcomes) - len(done) - len(failed)
    if not outcomes:
        return "Nothing to normalize: every sound is normalized already (use force to redo them)."
    parts = [f"Normalized {_plural(len(done), 'sound')}."] if done or failed else []
    if skipped:
        one = skipped == 1
        parts.append(
            f"{_plural(skipped, 'sound')} {'was' if one else 'were'} normalized already "
            f"(use force to redo {'it' if one else 'them'})."
        )
    text = " ".join(parts)
    if failed:
        text += f"\n{_plural(len(failed), 'sound')} failed:\n{_problems(failed)}"
    return text


def describe_settings(
    config: GuildConfig, guild: discord.Guild, note: str | None = None
) -> discord.Embed:
    embed = discord.Embed(title=f"Soundboard settings for {guild.name}", description=note)
    embed.add_field(name="Play cost", value=_plural(config.play_cost, "credit"))
    embed.add_field(name="Cooldown", value=f"{config.cooldown_seconds:g} s")
    embed.add_field(name="Queue cap", value=_plural(config.queue_cap, "sound"))
    embed.add_field(name="Idle timeout", value=f"{config.idle_timeout_seconds} s")
    embed.add_field(name="Entrance sounds", value="on" if config.entrance_sounds_enabled else "off")
    embed.add_field(
        name="Upload role",
        value=f"<@&{config.upload_role_id}>" if config.upload_role_id else "not set",
    )
    return embed


def _plan_label(plan: Plan) -> str:
    return (
        f"{plan.name} ({plan.code}): {plan.credits_per_refill} every "
        f"{plan.refill_period_hours} h, up to {plan.max_credits}"
    )


async def plan_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    if not is_manager(interaction):
        return []
    low = current.strip().lower()
    plans = await bot_of(interaction).services.users.list_plans()
    return [
        app_commands.Choice(name=_plan_label(p)[:100], value=p.code)
        for p in plans
        if low in p.code.lower() or low in p.name.lower()
    ][:25]


class AdminCog(commands.Cog):
    admin = app_commands.Group(
        name="admin",
        description="Manage the soundboard in this server",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    credits_group = app_commands.Group(
        name="credits", description="Give or take a member's credits", parent=admin
    )
    plan_group = app_commands.Group(name="plan", description="Members' plans", parent=admin)

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        require_manager(interaction)
        return True

    # ----- library --------------------------------------------------------------------------

    @admin.command(name="scan")
    async def scan(self, interaction: Interaction) -> None:
        """Bring the library in line with the sound folders; new files join this server."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await bot.services.scanner.scan(guild_id=member.guild.id)
        log.info("admin scan guild=%s by=%s", member.guild.id, member.id)
        await interaction.followup.send(describe_scan(report), ephemeral=True)

    @admin.command(name="normalize")
    @app_commands.rename(sound_type="type")
    @app_commands.describe(
        sound="Only this sound",
        sound_type="Only sounds of this type",
        force="Also redo sounds that are normalized already",
    )
    @app_commands.choices(sound_type=SOUND_TYPES)
    @app_commands.autocomplete(sound=sound_autocomplete)
    async def normalize(
        self,
        interaction: Interaction,
        sound: str | None = None,
        sound_type: app_commands.Choice[str] | None = None,
        force: bool = False,
    ) -> None:
        """Even out the loudness of this server's sounds (all, one type, or one sound)."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        sounds = bot.services.sounds
        if sound is not None and sound_type is not None:
            raise InvalidInput("Choose a sound or a type, not both.")
        kind = SoundType(sound_type.value) if sound_type is not None else None
        found = await sounds.find(member.guild.id, sound) if sound is not None else None
        await interaction.response.defer(ephemeral=True, thinking=True)
        if found is not None:
            outcomes = [await sounds.normalize(found.id or 0, force=force)]
        elif interaction.user.id in bot.settings.discord_owner_ids:
            # The bot's owners look after the whole library, every server's and the global one.
            outcomes = await sounds.normalize_selection(sound_type=kind, force=force)
        else:
            ids = [
                s.id or 0
                for s in await sounds.list_all(guild_id=member.guild.id)
                if (kind is None or s.sound_type == kind) and (force or not s.is_normalized)
            ]
            outcomes = await sounds.normalize_selection(ids=ids, force=force) if ids else []
        log.info(
            "admin normalize guild=%s by=%s sounds=%s force=%s",
            member.guild.id,
            member.id,
            len(outcomes),
            force,
        )
        await interaction.followup.send(describe_normalize(outcomes), ephemeral=True)

    # ----- credits and plans ----------------------------------------------------------------

    @credits_group.command(name="grant")
    @app_commands.describe(
        member="Who gets the credits", amount="How many", reason="Why (kept in their ledger)"
    )
    async def grant(
        self,
        interaction: Interaction,
        member: discord.Member,
        amount: app_commands.Range[int, 1, MAX_AMOUNT],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        """Give a member credits."""
        bot = bot_of(interaction)
        user = await bot.plays.member_user(member)
        row = await bot.services.credits.grant(
            user.id or 0, amount, reason=reason, actor=f"discord:{interaction.user.id}"
        )
        await interaction.response.send_message(
            f"Gave {_plural(amount, 'credit')} to {member.mention}; they have "
            f"{row.balance_after} now.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @credits_group.command(name="take")
    @app_commands.describe(
        member="Whose credits", amount="How many", reason="Why (kept in their ledger)"
    )
    async def take(
        self,
        interaction: Interaction,
        member: discord.Member,
        amount: app_commands.Range[int, 1, MAX_AMOUNT],
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        """Take credits away from a member."""
        bot = bot_of(interaction)
        user = await bot.plays.member_user(member)
        try:
            row = await bot.services.credits.take(
                user.id or 0, amount, reason=reason, actor=f"discord:{interaction.user.id}"
            )
        except InsufficientCredits as exc:
            raise InvalidInput(
                f"{member.display_name} has only {_plural(exc.balance, 'credit')}; "
                f"you can take at most {exc.balance}."
            ) from None
        await interaction.response.send_message(
            f"Took {_plural(amount, 'credit')} from {member.mention}; they have "
            f"{row.balance_after} now.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @plan_group.command(name="set")
    @app_commands.describe(member="Whose plan", plan="The new plan")
    @app_commands.autocomplete(plan=plan_autocomplete)
    async def set_plan(self, interaction: Interaction, member: discord.Member, plan: str) -> None:
        """Put a member on another plan (their balance stays; refills follow the new plan)."""
        bot = bot_of(interaction)
        services = bot.services
        wanted = plan.strip().lower()
        match = next(
            (
                p
                for p in await services.users.list_plans()
                if wanted in (p.code.lower(), p.name.lower())
            ),
            None,
        )
        if match is None:
            raise NotFound(f"There is no plan called '{plan.strip()[:50]}'.")
        user = await bot.plays.member_user(member)
        await services.users.set_plan(user.id or 0, match.code)
        await interaction.response.send_message(
            f"{member.mention} is now on the {discord.utils.escape_markdown(match.name)} plan.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    # ----- settings -------------------------------------------------------------------------

    @admin.command(name="settings")
    @app_commands.describe(
        play_cost="Credits each play costs",
        cooldown="Seconds a member waits between plays",
        queue_cap="How many sounds can wait in the queue",
        idle_timeout="Seconds of silence before I leave voice",
        entrance_sounds="Play members' entrance sounds when they join voice",
        upload_role="The role allowed to add sounds",
        reset="Put a setting back to the bot's default",
    )
    @app_commands.choices(
        reset=[app_commands.Choice(name=k.replace("_", " "), value=k) for k in RESETS]
    )
    async def settings(
        self,
        interaction: Interaction,
        play_cost: app_commands.Range[int, 0, 1000] | None = None,
        cooldown: app_commands.Range[float, 0, 3600] | None = None,
        queue_cap: app_commands.Range[int, 1, 100] | None = None,
        idle_timeout: app_commands.Range[int, 5, 86400] | None = None,
        entrance_sounds: bool | None = None,
        upload_role: discord.Role | None = None,
        reset: app_commands.Choice[str] | None = None,
    ) -> None:
        """Show this server's soundboard settings, or change them."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        guilds = bot.services.guilds
        given: dict[str, object] = {
            key: value
            for key, value in (
                ("play_cost", play_cost),
                ("cooldown_seconds", cooldown),
                ("queue_cap", queue_cap),
                ("idle_timeout_seconds", idle_timeout),
                ("entrance_sounds_enabled", entrance_sounds),
                ("upload_role_id", upload_role.id if upload_role is not None else None),
            )
            if value is not None
        }
        changes = dict(RESETS[reset.value]) if reset is not None else {}
        if set(changes) & set(given):
            raise InvalidInput("Reset a setting or change it, not both at once.")
        changes.update(given)
        if changes:
            config = await guilds.update(member.guild.id, **changes)
            log.info(
                "admin settings guild=%s by=%s changes=%s", member.guild.id, member.id, changes
            )
            note: str | None = "Settings updated."
        else:
            config = await guilds.config(member.guild.id)
            note = None
        await interaction.response.send_message(
            embed=describe_settings(config, member.guild, note),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(AdminCog())
