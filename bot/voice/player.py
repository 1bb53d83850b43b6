"""One player per guild: a queue, the voice connection, and accounting for each play."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.voice.client import SoundVoiceClient
from bot.voice.pacer import Stream
from core.errors import SoundboardError
from core.models import Sound
from core.services.playback import PlayCharge

if TYPE_CHECKING:
    from bot.client import AnySoundBot

log = logging.getLogger(__name__)


LEAVE_TIMEOUT_SECONDS = 3.0


class PlayerError(SoundboardError):
    code = "player"


class QueueFull(PlayerError):
    code = "queue_full"


@dataclass(eq=False)
class QueueItem:
    sound: Sound
    charge: PlayCharge | None
    requested_by: int  # Discord user id
    channel_id: int  # voice channel
    enqueued_at: float = field(default_factory=time.perf_counter)


class GuildPlayer:
    def __init__(self, bot: AnySoundBot, guild: discord.Guild) -> None:
        self.bot = bot
        self.guild_id = guild.id
        self.queue: deque[QueueItem] = deque()
        self.current: QueueItem | None = None
        self._stream: Stream | None = None
        self._fallback: bool = False
        self._idle_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self.on_stream_started: Callable[[QueueItem, Stream | None], None] | None = None

    @property
    def guild(self) -> discord.Guild | None:
        return self.bot.get_guild(self.guild_id)

    @property
    def voice(self) -> discord.VoiceClient | None:
        guild = self.guild
        vc = guild.voice_client if guild else None
        return vc if isinstance(vc, discord.VoiceClient) else None

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    def check_channel(self, channel: discord.VoiceChannel | discord.StageChannel) -> None:
        """Refuse a play into another channel while this guild's sounds are playing."""
        vc = self.voice
        if vc and vc.is_connected() and vc.channel and vc.channel.id != channel.id and self.busy:
            raise PlayerError(
                f"I'm busy playing in {vc.channel.mention}; join me there or wait until I'm done."
            )

    def check_capacity(self, cap: int) -> None:
        if len(self.queue) >= cap:
            raise QueueFull(f"The queue is full ({cap} sounds); try again in a moment.")

    async def connect(self, channel: discord.VoiceChannel | discord.StageChannel) -> None:
        async with self._connect_lock:
            vc = self.voice
            if vc is not None and vc.is_connected():
                if vc.channel and vc.channel.id != channel.id:
                    await vc.move_to(channel)
                return
            if vc is not None:  # a stale client left behind by a failed connection
                await vc.disconnect(force=True)
            try:
                await channel.connect(
                    self_deaf=True, timeout=15, reconnect=True, cls=SoundVoiceClient
                )
            except (TimeoutError, discord.ClientException, discord.DiscordException) as exc:
                log.warning("voice connect failed guild=%s error=%s", self.guild_id, exc)
                raise PlayerError("I couldn't join your voice channel; please try again.") from exc

    async def enqueue(self, item: QueueItem) -> int:
        """Queue `item`; returns its position (0: playing now)."""
        self._cancel_idle()
        if self.current is None and not self.queue:
            self._start(item)
            return 0
        self.queue.append(item)
        return len(self.queue)

    def _start(self, item: QueueItem) -> None:
        vc = self.voice
        self.current = item
        if vc is None or not vc.is_connected():
            self._failed(item, "I'm not connected to voice")
            return
        path, is_ogg = self.bot.services.sounds.playback_file(item.sound)
        if self.bot.settings.playback_engine == "ffmpeg-pcm":
            self._start_stock(vc, item)
            if self.current is not item:
                return
        elif is_ogg:
            try:
                packets = self.bot.packet_cache.packets(path)
            except (OSError, ValueError) as exc:
                self._failed(item, f"the sound file is missing or broken ({exc})")
                return
            self._fallback = False
            self._speak(vc, True)
            self._stream = self.bot.pacer.play(
                vc, packets, self._on_stream_done, label=f"{self.guild_id}:{item.sound.id}"
            )
        else:
            self._start_fallback(vc, item, path)
            if self.current is not item:
                return
        self._started(item)

    def _start_fallback(self, vc: discord.VoiceClient, item: QueueItem, path: Path) -> None:
        """No playback file yet: let the bundled ffmpeg encode Opus (never our process)."""
        if not path.exists():
            self._failed(item, "the sound file is missing")
            return
        from core.ffmpeg import ffmpeg_binary

        source = discord.FFmpegOpusAudio(str(path), executable=ffmpeg_binary())
        self._fallback = True
        loop = self.bot.loop

        def after(error: Exception | None) -> None:
            loop.call_soon_threadsafe(self._advance, item, str(error) if error else None)

        vc.play(source, after=after)

    def _start_stock(self, vc: discord.VoiceClient, item: QueueItem) -> None:
        """discord.py's stock path on the original file: only for comparing in benchmarks."""
        from core.ffmpeg import ffmpeg_binary

        storage = self.bot.services.storage
        path = storage.original_path(item.sound.sound_type, item.sound.original_filename)
        source = discord.FFmpegPCMAudio(str(path), executable=ffmpeg_binary())
        self._fallback = True
        loop = self.bot.loop

        def after(error: Exception | None) -> None:
            loop.call_soon_threadsafe(self._advance, item, str(error) if error else None)

        vc.play(source, after=after)

    def _started(self, item: QueueItem) -> None:
        log.info(
            "play started guild=%s sound=%s user=%s queue=%s",
            self.guild_id,
            item.sound.id,
            item.requested_by,
            len(self.queue),
        )
        if self.on_stream_started is not None:
            self.on_stream_started(item, self._stream)
        self.bot.spawn(self._record(item))

    async def _record(self, item: QueueItem) -> None:
        if item.charge is not None:
            await self.bot.services.playback.played(item.charge, channel_id=item.channel_id)
        else:
            await self.bot.services.sounds.record_play(
                item.sound, user_id=None, guild_id=self.guild_id, channel_id=item.channel_id
            )
        self.bot.services.metrics.plays.inc(result="started")

    def _speak(self, vc: discord.VoiceClient, on: bool) -> None:
        state = discord.SpeakingState.voice if on else discord.SpeakingState.none
        with contextlib.suppress(Exception):
            self.bot.spawn(vc.ws.speak(state))

    def _on_stream_done(self, stream: Stream) -> None:
        # Called by the pacer in the middle of sending: start the next sound after it returns.
        item = self.current
        self.bot.loop.call_soon(self._advance_stream, stream, item)

    def _advance_stream(self, stream: Stream, item: QueueItem | None) -> None:
        if stream is not self._stream or item is None:
            return
        self._stream = None
        vc = self.voice
        if vc is not None and vc.is_connected():
            self._speak(vc, False)
        self._advance(item, stream.error)

    def _advance(self, item: QueueItem, error: str | None) -> None:
        if self.current is not item:
            return
        if error:
            log.warning(
                "play ended with error guild=%s sound=%s error=%s",
                self.guild_id,
                item.sound.id,
                error,
            )
        self.current = None
        self._next()

    def _failed(self, item: QueueItem, reason: str) -> None:
        log.warning(
            "play could not start guild=%s sound=%s reason=%s", self.guild_id, item.sound.id, reason
        )
        if item.charge is not None:
            self.bot.spawn(self.bot.services.playback.refund(item.charge, reason))
        self.current = None
        self._next()

    def _next(self) -> None:
        if self.queue:
            self._start(self.queue.popleft())
        else:
            self._schedule_idle()

    def skip(self) -> QueueItem | None:
        skipped = self.current
        if skipped is None:
            return None
        if self._stream is not None:
            self._stream.stop()
        elif self._fallback and self.voice is not None:
            self.voice.stop()
        return skipped

    def stop(self) -> list[QueueItem]:
        """Stop playing and clear the queue; queued plays that never started are refunded."""
        dropped = list(self.queue)
        self.queue.clear()
        for item in dropped:
            if item.charge is not None:
                self.bot.spawn(self.bot.services.playback.refund(item.charge, "queue cleared"))
        self.skip()
        return dropped

    async def leave(self, *, timeout: float = LEAVE_TIMEOUT_SECONDS) -> None:
        self.stop()
        self._cancel_idle()
        vc = self.voice
        if vc is not None:
            # discord.py waits for Discord to confirm; don't let a lost confirmation hold the
            # guild's player (it cleans up the voice client either way).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(vc.disconnect(force=False), timeout=timeout)
        log.info("left voice guild=%s", self.guild_id)

    def _schedule_idle(self) -> None:
        self._cancel_idle()
        self._idle_task = self.bot.loop.create_task(self._idle_leave())

    def _cancel_idle(self) -> None:
        if self._idle_task is not None and not self._idle_task.done():
            self._idle_task.cancel()
        self._idle_task = None

    async def _idle_leave(self) -> None:
        config = await self.bot.services.guilds.config(self.guild_id)
        await asyncio.sleep(config.idle_timeout_seconds)
        if not self.busy:
            log.info("idle timeout guild=%s", self.guild_id)
            await self.leave()


class PlayerManager:
    def __init__(self, bot: AnySoundBot) -> None:
        self.bot = bot
        self._players: dict[int, GuildPlayer] = {}

    def get(self, guild: discord.Guild) -> GuildPlayer:
        player = self._players.get(guild.id)
        if player is None:
            player = self._players[guild.id] = GuildPlayer(self.bot, guild)
        return player

    def existing(self, guild_id: int) -> GuildPlayer | None:
        return self._players.get(guild_id)

    def queue_lengths(self) -> dict[int, int]:
        return {gid: len(p.queue) for gid, p in self._players.items()}

    async def close(self) -> None:
        """Stop every player and leave voice (all guilds at once, each wait bounded)."""
        # At shutdown the gateway may no longer deliver Discord's confirmation: don't wait long.
        await asyncio.gather(*(p.leave(timeout=0.5) for p in self._players.values()))
