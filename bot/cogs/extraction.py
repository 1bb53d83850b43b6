"""/extract and /extractions: pull audio from video and audio sites into the server's library.

/extract answers at once with the queued job and then edits that answer as the background
processor reports progress (ExtractionUpdated events): processing with the download progress,
then completed with a Play button (custom id ``sb:play:<sound id>``) or failed with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import Interaction, bot_of, is_manager, member_of
from bot.errors import GENERIC, describe, message_for, reply
from core.events import Event, ExtractionUpdated
from core.models import Extraction, ExtractionStatus, Sound

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)

PLAY_ID_PREFIX = "sb:play:"
# Interaction tokens last 15 minutes; stop editing a little before that.
WATCH_SECONDS = 14 * 60
# Progress edits at most this often per job (status changes are sent at once).
PROGRESS_EDIT_SECONDS = 2.0
LIST_LIMIT = 15


def _escape(text: str) -> str:
    return discord.utils.escape_markdown(discord.utils.escape_mentions(text))


def render(job: Extraction, sound: Sound | None) -> str:
    head = f"Extraction #{job.id}"
    link = f"<{job.url}>"
    if job.status == ExtractionStatus.PENDING:
        return f"{head}: **pending**, waiting for a worker.\n{link}"
    if job.status == ExtractionStatus.PROCESSING:
        what = f" **{_escape(job.title[:200])}**" if job.title else ""
        return f"{head}: **processing**{what} ({round(job.progress * 100)}% downloaded).\n{link}"
    if job.status == ExtractionStatus.COMPLETED:
        if sound is None:
            return f"{head}: **completed**, but the sound has been deleted since.\n{link}"
        return (
            f"{head}: **completed**. Added **{_escape(sound.name)}** "
            f"({sound.duration_ms / 1000:.1f} s).\n{link}"
        )
    return f"{head}: **failed**. {_escape(job.error or 'Unknown error.')}\n{link}"


def play_button(sound_id: int) -> discord.ui.Button[Any]:
    return discord.ui.Button(
        style=discord.ButtonStyle.primary, label="Play", custom_id=f"{PLAY_ID_PREFIX}{sound_id}"
    )


def play_view(sound_id: int) -> discord.ui.View:
    """A view that only carries the button: clicks go to the registered DynamicItem (ours or
    the panel's), so the view itself is never kept in memory."""
    view = discord.ui.View(timeout=None)
    view.add_item(play_button(sound_id))
    view.stop()
    return view


class PlaySoundButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"sb:play:(?P<id>[0-9]{1,20})"
):
    """A Play button that keeps working after restarts (used when no panel cog provides one)."""

    def __init__(self, sound_id: int) -> None:
        super().__init__(play_button(sound_id))
        self.sound_id = sound_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
    ) -> PlaySoundButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            bot = bot_of(interaction)
            member = member_of(interaction)
            sound = await bot.services.sounds.get_for_guild(self.sound_id, member.guild.id)
            result = await bot.plays.request(member, sound, source="button")
            await interaction.response.send_message(
                bot.plays.describe(sound, result), ephemeral=True
            )
        except Exception as exc:
            text = message_for(exc)
            if text is None:
                log.error("play button failed %s", describe(interaction), exc_info=exc)
                text = GENERIC
            await reply(interaction, text)


def has_play_handler(bot: commands.Bot, sound_id: int = 1) -> bool:
    """Whether some DynamicItem (the panel's, say) already handles ``sb:play:<id>``."""
    store = getattr(getattr(bot, "_connection", None), "_view_store", None)
    patterns = getattr(store, "_dynamic_items", {}) or {}
    return any(p.fullmatch(f"{PLAY_ID_PREFIX}{sound_id}") for p in patterns)


@dataclass
class _Watch:
    """The /extract answers to keep up to date for one job."""

    interactions: list[discord.Interaction[Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last_edit: float = 0.0
    last_status: str = ""
    deferred: bool = False  # a throttled progress edit is scheduled
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ExtractionCog(commands.Cog):
    def __init__(self, bot: AnySoundBot) -> None:
        self.bot = bot
        self._watches: dict[int, _Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = bot.services.events.subscribe(self._on_event)

    async def cog_unload(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()

    # ----- commands -----------------------------------------------------------------------

    @app_commands.command(name="extract")
    @app_commands.guild_only()
    @app_commands.describe(
        url="Link to a video or audio page",
        name="Name for the new sound (default: the media's title)",
    )
    async def extract(self, interaction: Interaction, url: str, name: str | None = None) -> None:
        """Pull the audio of a video or audio page into this server's sounds."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        user = await bot.plays.member_user(member)
        submitted = await bot.services.extractions.submit(
            url,
            guild_id=member.guild.id,
            user_id=user.id or 0,
            channel_id=interaction.channel_id,
            name=name,
        )
        job = submitted.job
        assert job.id is not None
        log.info(
            "extract requested job=%s guild=%s user=%s reused=%s",
            job.id,
            member.guild.id,
            member.id,
            submitted.reused,
        )
        await interaction.response.send_message(
            render(job, None), allowed_mentions=discord.AllowedMentions.none()
        )
        watch = self._watches.setdefault(job.id, _Watch())
        watch.interactions.append(interaction)
        watch.last_status = job.status.value
        # Events may have gone by while we answered: bring the answer up to date now.
        self._schedule(job.id, force=True)

    @app_commands.command(name="extractions")
    @app_commands.guild_only()
    async def extractions(self, interaction: Interaction) -> None:
        """Your extractions and their status (everyone's, for server managers)."""
        bot = bot_of(interaction)
        member = member_of(interaction)
        services = bot.services
        manager = is_manager(interaction)
        user = await bot.plays.member_user(member)
        page = await services.extractions.list_page(
            guild_id=member.guild.id,
            user_id=None if manager else user.id,
            limit=LIST_LIMIT,
        )
        if not page.items:
            text = "No extractions here yet." if manager else "You have no extractions here yet."
            await interaction.response.send_message(text, ephemeral=True)
            return
        discord_ids: dict[int, int | None] = {}
        lines = ["Extractions in this server:" if manager else "Your extractions:"]
        for job in page.items:
            what = _escape((job.title or job.url)[:80])
            status = job.status.value
            if job.status == ExtractionStatus.PROCESSING:
                status += f" {round(job.progress * 100)}%"
            elif job.status == ExtractionStatus.FAILED and job.error:
                status += f": {_escape(job.error[:120])}"
            elif job.status == ExtractionStatus.COMPLETED and job.sound_id is not None:
                status += f" (sound {job.sound_id})"
            line = f"#{job.id} · **{status}** · {what}"
            if manager:
                if job.user_id not in discord_ids:
                    owner = await services.users.get(job.user_id)
                    discord_ids[job.user_id] = owner.discord_id
                who = discord_ids[job.user_id]
                line += f" · <@{who}>" if who else ""
            lines.append(line)
        await interaction.response.send_message(
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    # ----- keeping answers up to date ----------------------------------------------------

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, ExtractionUpdated) and event.extraction_id in self._watches:
            self._schedule(event.extraction_id)

    def _schedule(self, job_id: int, *, force: bool = False, delay: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(
            self._refresh(job_id, force=force, delay=delay)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, job_id: int, *, force: bool = False, delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
            force = True
        watch = self._watches.get(job_id)
        if watch is None:
            return
        async with watch.lock:
            services = self.bot.services
            job = await services.extractions.get(job_id)
            status = job.status.value
            now = time.monotonic()
            if now - watch.started > WATCH_SECONDS:
                self._watches.pop(job_id, None)
                return
            wait = PROGRESS_EDIT_SECONDS - (now - watch.last_edit)
            if (
                not force
                and status == watch.last_status
                and job.status == ExtractionStatus.PROCESSING
                and wait > 0
            ):
                # Too soon after the last edit: edit once more when the interval is over, so
                # the latest progress is shown even if no further event comes.
                if not watch.deferred:
                    watch.deferred = True
                    self._schedule(job_id, delay=wait)
                return
            watch.deferred = False
            sound: Sound | None = None
            if job.status == ExtractionStatus.COMPLETED and job.sound_id is not None:
                try:
                    sound = await services.sounds.get(job.sound_id)
                except Exception:
                    sound = None
            view = play_view(sound.id) if sound is not None and sound.id is not None else None
            content = render(job, sound)
            for interaction in list(watch.interactions):
                try:
                    await interaction.edit_original_response(
                        content=content,
                        view=view,
                        allowed_mentions=discord.AllowedMentions.none(),
                    )
                except discord.HTTPException as exc:
                    log.info("extraction reply not updated job=%s error=%s", job_id, exc)
                    watch.interactions.remove(interaction)
            watch.last_edit = time.monotonic()
            watch.last_status = status
            if job.status in (ExtractionStatus.COMPLETED, ExtractionStatus.FAILED):
                self._watches.pop(job_id, None)


async def setup(bot: commands.Bot) -> None:
    if not has_play_handler(bot):
        bot.add_dynamic_items(PlaySoundButton)
    await bot.add_cog(ExtractionCog(cast("AnySoundBot", bot)))
