"""The fake Discord: REST API, CDN, main gateway, voice gateway and voice UDP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import WSMsgType, web

from ._util import (
    DEFAULT_PERMISSIONS,
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    GUILD_TEXT,
    GUILD_VOICE,
    SnowflakeGenerator,
    dumps,
    error_response,
    iso_now,
    json_response,
)
from .audio import SILENCE_FRAMES_AT_END, is_silence_frame
from .models import (
    CallbackRecord,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeRole,
    FakeUser,
    GatewaySession,
    InjectedError,
    MessageEvent,
    RequestRecord,
    StoredAttachment,
    VoiceStateRecord,
)
from .tls import SelfSignedCert, generate_self_signed_cert
from .voice import RtpPacket, SpeakingEvent, VoiceConnection, VoiceServer

_log = logging.getLogger(__name__)

T = TypeVar("T")

API_PREFIX = "/api/{api_version:v[0-9]+}"

# Interaction types.
PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Interaction callback types.
CB_CHANNEL_MESSAGE = 4
CB_DEFERRED_CHANNEL_MESSAGE = 5
CB_DEFERRED_UPDATE_MESSAGE = 6
CB_UPDATE_MESSAGE = 7
CB_AUTOCOMPLETE_RESULT = 8
CB_MODAL = 9

# Application command option types.
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_NUMBER = 10
OPT_ATTACHMENT = 11

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RECORD_KEY = web.RequestKey("fakediscord_record", int)
# wait_for() re-checks on every fake-side change and at least this often (for predicates
# that look at client-side state).
_POLL_SECONDS = 0.01


class FakeDiscord:
    """A fake Discord on 127.0.0.1 for discord.py 2.7 clients. See the package docstring.

    All methods must be called from the event loop the fake was started on.
    """

    def __init__(
        self,
        *,
        token: str | None = "fake-bot-token",
        bot_id: int | None = None,
        bot_name: str = "FakeBot",
        application_id: int | None = None,
        application_flags: int = 0,
        shard_count: int = 1,
        heartbeat_interval_ms: int = 41250,
        voice_heartbeat_interval_ms: float = 13750.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.token = token
        self.ids = SnowflakeGenerator()
        self.bot_user = FakeUser(id=bot_id or self.ids.next(), username=bot_name, bot=True)
        self.application_id = application_id or self.bot_user.id
        self.application_flags = application_flags
        self.shard_count = shard_count
        self.heartbeat_interval_ms = heartbeat_interval_ms

        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        #: Registered application commands: key None = global, else guild id.
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        #: Every bulk upload (PUT) as received: (guild id or None, payload).
        self.command_uploads: list[tuple[int | None, list[dict[str, Any]]]] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.message_events: list[MessageEvent] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self.requests: list[RequestRecord] = []
        self.unknown_requests: list[RequestRecord] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.gateway_frames_received: list[dict[str, Any]] = []
        #: (guild id, channel id or None) for every op 4 the bot sent.
        self.bot_voice_requests: list[tuple[int, int | None]] = []
        self._voice_tokens: dict[int, set[str]] = {}
        self._injected: list[InjectedError] = []

        self._changed = asyncio.Event()
        self._tmpdir: Path | None = None
        self._cert: SelfSignedCert | None = None
        self._runners: list[web.AppRunner] = []
        self._gateway_sockets: set[web.WebSocketResponse] = set()
        self._session_locks: dict[str, asyncio.Lock] = {}
        self.port = 0
        self.voice_port = 0
        self.voice = VoiceServer(
            host=host,
            validate=self._validate_voice,
            notify=self._notify,
            heartbeat_interval_ms=voice_heartbeat_interval_ms,
        )
        self._started = False

    # ================================================================== lifecycle
    async def start(self) -> FakeDiscord:
        if self._started:
            return self
        self._changed = asyncio.Event()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fakediscord-"))
        self._cert = await asyncio.to_thread(generate_self_signed_cert, self._tmpdir, self.host)

        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runners.append(runner)

        voice_app = web.Application()
        voice_app.router.add_get("/", self.voice.handle_ws)
        voice_runner = web.AppRunner(voice_app, access_log=None, handle_signals=False)
        await voice_runner.setup()
        voice_site = web.TCPSite(
            voice_runner, self.host, 0, ssl_context=self._cert.server_context()
        )
        await voice_site.start()
        self.voice_port = int(voice_runner.addresses[0][1])
        self._runners.append(voice_runner)

        await self.voice.start_udp()
        self._started = True
        _log.info(
            "fake discord on %s (voice wss://%s, udp %d)",
            self.base_url,
            self.voice_endpoint,
            self.voice.udp_port,
        )
        return self

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for ws in list(self._gateway_sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        await self.voice.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._notify()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ================================================================== addresses
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        """Value for ``discord.http.Route.BASE`` / ``DISCORD_API_BASE_URL``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` / ``DISCORD_GATEWAY_URL``."""
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def cdn_url(self) -> str:
        return self.base_url

    @property
    def voice_endpoint(self) -> str:
        """``host:port`` of the TLS voice gateway, as sent in VOICE_SERVER_UPDATE."""
        return f"{self.host}:{self.voice_port}"

    @property
    def udp_port(self) -> int:
        return self.voice.udp_port

    @property
    def cert_path(self) -> Path:
        """PEM certificate of the voice gateway; use as ``SSL_CERT_FILE`` for a subprocess."""
        if self._cert is None:
            raise RuntimeError("FakeDiscord is not started")
        return self._cert.cert_path

    def client_ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` trusting only the fake's certificate."""
        if self._cert is None:
            raise RuntimeError("FakeDiscord is not started")
        return self._cert.client_context()

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a bot subprocess: settings, token and ``SSL_CERT_FILE``."""
        env = dict(base or {})
        env.update(
            DISCORD_API_BASE_URL=self.api_base_url,
            DISCORD_GATEWAY_URL=self.gateway_url,
            SSL_CERT_FILE=str(self.cert_path),
        )
        if self.token is not None:
            env["DISCORD_TOKEN"] = self.token
        return env

    # ================================================================== waiting
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 5.0,
        what: str = "condition",
    ) -> T:
        """Wait until ``predicate()`` returns something truthy.

        Re-checked on every change of the fake's state and every 10 ms, so predicates may
        also look at client-side state (e.g. a bot's caches).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fakediscord: timed out after {timeout}s waiting for {what}")
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, _POLL_SECONDS))

    async def wait_for_callback(
        self, interaction: FakeInteraction, timeout: float = 5.0
    ) -> CallbackRecord:
        return await self.wait_for(
            lambda: interaction.callback, timeout, f"callback of interaction {interaction.id}"
        )

    async def wait_for_original_message(
        self,
        interaction: FakeInteraction,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """The interaction's original response once it exists and is no longer "thinking".

        With ``predicate``, wait until the message satisfies it instead.
        """

        def check() -> dict[str, Any] | None:
            msg = interaction.original_message
            if msg is None:
                return None
            if predicate is not None:
                return msg if predicate(msg) else None
            return None if int(msg.get("flags", 0)) & FLAG_LOADING else msg

        return await self.wait_for(check, timeout, f"original response of {interaction.id}")

    async def wait_for_followup(
        self, interaction: FakeInteraction, count: int = 1, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The ``count``-th followup message (1-based) of the interaction."""

        def check() -> dict[str, Any] | None:
            followups = interaction.followups
            return followups[count - 1] if len(followups) >= count else None

        return await self.wait_for(check, timeout, f"followup #{count} of {interaction.id}")

    async def wait_for_message(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Any stored message (channel or interaction) satisfying ``predicate``."""

        def check() -> dict[str, Any] | None:
            for msg in self.messages.values():
                if predicate(msg):
                    return msg
            return None

        return await self.wait_for(check, timeout, "message")

    async def wait_for_commands(
        self, guild_id: int | None = None, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait for a command upload (global, or for ``guild_id``) and return the commands."""
        return await self.wait_for(
            lambda: self.commands.get(guild_id), timeout, f"commands for {guild_id}"
        )

    async def wait_for_gateway_ready(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` gateway sessions were sent READY + GUILD_CREATEs."""
        await self.wait_for(
            lambda: sum(1 for s in self.sessions.values() if s.ready) >= count,
            timeout,
            f"{count} ready gateway session(s)",
        )

    async def wait_for_bot_voice(
        self, guild_id: int, channel_id: int | None, timeout: float = 5.0
    ) -> None:
        """Wait until the bot's voice state in the guild is ``channel_id`` (None = left)."""

        def check() -> bool:
            vs = self.guilds[guild_id].voice_states.get(self.bot_user.id)
            return (vs.channel_id if vs else None) == channel_id

        await self.wait_for(check, timeout, f"bot voice channel {channel_id} in {guild_id}")

    def bot_voice_channel(self, guild_id: int) -> int | None:
        """The voice channel the bot is in (per the gateway), or None."""
        vs = self.guilds[guild_id].voice_states.get(self.bot_user.id)
        return vs.channel_id if vs else None

    async def wait_for_voice_connection(
        self, guild_id: int, timeout: float = 5.0
    ) -> VoiceConnection:
        """Wait for a voice connection that has its key and a discovered UDP address."""

        def check() -> VoiceConnection | None:
            conn = self.voice.active_connection(guild_id)
            return conn if conn is not None and conn.ready else None

        return await self.wait_for(check, timeout, f"voice connection in {guild_id}")

    # ================================================================== audio
    def audio_packets(self, guild_id: int, ssrc: int | None = None) -> list[RtpPacket]:
        """Every RTP packet received for the guild, in arrival order."""
        packets = self.voice.packets.get(guild_id, [])
        return [p for p in packets if ssrc is None or p.ssrc == ssrc]

    def clear_audio(self, guild_id: int | None = None) -> None:
        if guild_id is None:
            self.voice.packets.clear()
        else:
            self.voice.packets.pop(guild_id, None)

    def speaking_events(self, guild_id: int | None = None) -> list[SpeakingEvent]:
        return [e for e in self.voice.speaking if guild_id is None or e.guild_id == guild_id]

    async def wait_for_audio(
        self, guild_id: int, min_packets: int = 1, timeout: float = 5.0, *, start: int = 0
    ) -> list[RtpPacket]:
        """Wait until at least ``min_packets`` RTP packets (from index ``start`` on) arrived.

        Counts every packet, silence frames included; returns the packets from ``start``.
        """

        def check() -> list[RtpPacket] | None:
            packets = self.audio_packets(guild_id)[start:]
            return packets if len(packets) >= min_packets else None

        return await self.wait_for(check, timeout, f"{min_packets} audio packets in {guild_id}")

    async def wait_for_silence_end(
        self, guild_id: int, start: int = 0, timeout: float = 10.0
    ) -> list[RtpPacket]:
        """Wait for the end of a playback: five consecutive silence frames.

        Looks at packets from index ``start`` on and returns them up to and including
        the fifth silence frame (i.e. one whole playback when ``start`` is where it began).
        """

        def check() -> list[RtpPacket] | None:
            packets = self.audio_packets(guild_id)[start:]
            run = 0
            for i, p in enumerate(packets):
                if is_silence_frame(p.payload):
                    run += 1
                    if run == SILENCE_FRAMES_AT_END:
                        return packets[: i + 1]
                else:
                    run = 0
            return None

        return await self.wait_for(check, timeout, f"end of playback in {guild_id}")

    async def close_voice_websocket(self, guild_id: int, code: int = 4015) -> bool:
        """Close the bot's voice websocket (4015 = "voice server crashed": it resumes)."""
        return await self.voice.close_connection(guild_id, code)

    # ================================================================== gateway barrier
    async def sync_gateway(self, guild_id: int | None = None, timeout: float = 5.0) -> None:
        """Barrier: return once the client has *parsed* every event sent so far.

        Sends op 1 (HEARTBEAT request) on each live session (covering ``guild_id``) and
        waits for the client's heartbeat carrying the latest sequence number. discord.py
        handles frames in order and its parsers update caches synchronously, so afterwards
        e.g. ``guild.get_member()``/``member.voice`` reflect the events. Event handlers
        (``on_*``) are separate tasks and may still be pending.
        """
        targets: list[tuple[GatewaySession, int]] = []
        for session in self._sessions_for(guild_id):
            ws = session.ws
            if ws is None or ws.closed:
                continue
            lock = self._session_locks.setdefault(session.session_id, asyncio.Lock())
            async with lock:
                targets.append((session, session.seq))
                await ws.send_str(dumps({"op": 1, "d": None, "s": None, "t": None}))
        if targets:
            await self.wait_for(
                lambda: all((s.last_heartbeat_seq or 0) >= seq for s, seq in targets),
                timeout,
                "gateway sync (client heartbeat)",
            )

    async def _settle(self, guild_id: int | None, sync: bool) -> None:
        if not sync:
            return
        try:
            await self.sync_gateway(guild_id, timeout=5.0)
        except TimeoutError:
            _log.warning("client did not answer the sync heartbeat within 5 s; continuing")

    # ================================================================== guild setup
    async def add_guild(
        self,
        guild_id: int | None = None,
        name: str = "Test Guild",
        *,
        text_channels: Sequence[str] = ("general",),
        voice_channels: Sequence[str] = ("Voice",),
        owner_id: int | None = None,
        everyone_permissions: int = DEFAULT_PERMISSIONS,
        bot_permissions: int = DEFAULT_PERMISSIONS,
        shard_id: int | None = None,
        sync: bool = True,
    ) -> FakeGuild:
        """Create a guild with the bot as a member; GUILD_CREATE it if the bot is connected.

        ``shard_id`` picks an id that lands on that shard of ``self.shard_count``.
        ``sync`` (here and in the other setup helpers): wait until the connected client
        has parsed the resulting events (see :meth:`sync_gateway`).
        """
        if guild_id is None:
            guild_id = (
                self.ids.for_shard(shard_id, self.shard_count)
                if shard_id is not None
                else self.ids.next()
            )
        owner = owner_id or self.ids.next()
        guild = FakeGuild(id=guild_id, name=name, owner_id=owner)
        guild.roles[guild_id] = FakeRole(
            id=guild_id, name="@everyone", permissions=everyone_permissions
        )
        bot_role = FakeRole(
            id=self.ids.next(),
            name=self.bot_user.username,
            permissions=bot_permissions,
            position=1,
            managed=True,
        )
        guild.roles[bot_role.id] = bot_role
        position = 0
        for channel_name in text_channels:
            cid = self.ids.next()
            guild.channels[cid] = FakeChannel(cid, guild_id, channel_name, GUILD_TEXT, position)
            position += 1
        for channel_name in voice_channels:
            cid = self.ids.next()
            guild.channels[cid] = FakeChannel(cid, guild_id, channel_name, GUILD_VOICE, position)
            position += 1
        guild.members[self.bot_user.id] = FakeMember(self.bot_user, [bot_role.id])
        self.guilds[guild_id] = guild
        if owner_id is None:
            # The owner exists as a member so that permission checks stay realistic.
            owner_user = self._ensure_user(owner, f"owner{owner % 10000}")
            guild.members[owner] = FakeMember(owner_user)
        for session in self._sessions_for(guild_id):
            await self._dispatch_to(session, "GUILD_CREATE", guild.payload(self.bot_user.id))
        self._notify()
        await self._settle(guild_id, sync)
        return guild

    async def add_channel(
        self,
        guild_id: int,
        name: str,
        *,
        voice: bool = False,
        channel_id: int | None = None,
        sync: bool = True,
    ) -> FakeChannel:
        guild = self.guilds[guild_id]
        cid = channel_id or self.ids.next()
        channel = FakeChannel(
            cid, guild_id, name, GUILD_VOICE if voice else GUILD_TEXT, len(guild.channels)
        )
        guild.channels[cid] = channel
        await self.dispatch("CHANNEL_CREATE", channel.payload(), guild_id=guild_id)
        await self._settle(guild_id, sync)
        return channel

    async def add_role(
        self,
        guild_id: int,
        name: str,
        permissions: int = 0,
        *,
        role_id: int | None = None,
        sync: bool = True,
    ) -> FakeRole:
        guild = self.guilds[guild_id]
        role = FakeRole(
            id=role_id or self.ids.next(),
            name=name,
            permissions=permissions,
            position=len(guild.roles),
        )
        guild.roles[role.id] = role
        await self.dispatch(
            "GUILD_ROLE_CREATE",
            {"guild_id": str(guild_id), "role": role.payload()},
            guild_id=guild_id,
        )
        await self._settle(guild_id, sync)
        return role

    async def add_member(
        self,
        guild_id: int,
        user_id: int | None = None,
        name: str | None = None,
        *,
        permissions: int | None = None,
        roles: Iterable[int] = (),
        bot: bool = False,
        global_name: str | None = None,
        nick: str | None = None,
        sync: bool = True,
    ) -> FakeMember:
        """Add a member; ``permissions`` gives them a personal role with those bits."""
        guild = self.guilds[guild_id]
        uid = user_id or self.ids.next()
        user = self._ensure_user(
            uid, name or f"user{uid % 100000}", bot=bot, global_name=global_name
        )
        role_ids = list(roles)
        for rid in role_ids:
            if rid not in guild.roles:
                raise KeyError(f"unknown role {rid} in guild {guild_id}")
        if permissions is not None:
            role = FakeRole(
                id=self.ids.next(),
                name=f"perms-{user.username}",
                permissions=permissions,
                position=len(guild.roles),
            )
            guild.roles[role.id] = role
            await self.dispatch(
                "GUILD_ROLE_CREATE",
                {"guild_id": str(guild_id), "role": role.payload()},
                guild_id=guild_id,
            )
            role_ids.append(role.id)
        member = FakeMember(user=user, role_ids=role_ids, nick=nick)
        guild.members[uid] = member
        await self.dispatch(
            "GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild_id)}, guild_id=guild_id
        )
        await self._settle(guild_id, sync)
        return member

    async def set_user_voice(
        self,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        sync: bool = True,
    ) -> None:
        """Move a member into a voice channel (or out with None) and tell the bot."""
        guild = self.guilds[guild_id]
        if user_id not in guild.members:
            raise KeyError(f"user {user_id} is not a member of {guild_id}")
        if channel_id is None:
            previous = guild.voice_states.pop(user_id, None)
            session_id = previous.session_id if previous else secrets.token_hex(16)
        else:
            self._voice_channel(guild, channel_id)
            previous = guild.voice_states.get(user_id)
            session_id = previous.session_id if previous else secrets.token_hex(16)
            guild.voice_states[user_id] = VoiceStateRecord(
                user_id, channel_id, session_id, self_mute, self_deaf
            )
        await self.dispatch(
            "VOICE_STATE_UPDATE",
            self._voice_state_payload(guild, user_id, channel_id, session_id, self_mute, self_deaf),
            guild_id=guild_id,
        )
        await self._settle(guild_id, sync)

    async def disconnect_bot_from_voice(self, guild_id: int, *, sync: bool = True) -> None:
        """Kick the bot out of voice (as a moderator would): VOICE_STATE_UPDATE null + 4014."""
        guild = self.guilds[guild_id]
        previous = guild.voice_states.pop(self.bot_user.id, None)
        session_id = previous.session_id if previous else ""
        await self.dispatch(
            "VOICE_STATE_UPDATE",
            self._voice_state_payload(guild, self.bot_user.id, None, session_id, False, False),
            guild_id=guild_id,
        )
        await self.voice.close_connection(guild_id, 4014)
        await self._settle(guild_id, sync)

    def add_attachment(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Store bytes on the fake CDN; returns an attachment object for ``resolved``."""
        att = self._store_attachment(filename, data, content_type)
        return att.payload()

    def get_attachment_bytes(self, attachment: Mapping[str, Any] | int) -> bytes:
        att_id = int(attachment["id"]) if isinstance(attachment, Mapping) else int(attachment)
        return self.attachments[att_id].data

    def user(self, user_id: int) -> FakeUser:
        return self.users[user_id]

    # ================================================================== interactions
    async def send_slash_command(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        subcommand: str | None = None,
        group: str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Invoke a slash command as ``user_id``; returns the interaction handle.

        ``name`` may be qualified (``"sound play"``, ``"admin sound add"``) or use
        ``group``/``subcommand``. ``options`` maps option names to values; option types
        come from the registered command (or are guessed from the Python values).
        Values: str/int/float/bool, an attachment dict from :meth:`add_attachment`,
        user/channel/role ids or ``FakeUser``/``FakeMember``/``FakeChannel``/``FakeRole``.
        A list of raw option dicts is passed through unchanged.
        """
        return await self._send_command_interaction(
            APPLICATION_COMMAND,
            guild_id,
            channel_id,
            user_id,
            name,
            options,
            subcommand=subcommand,
            group=group,
            focused=None,
            locale=locale,
        )

    async def send_autocomplete(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
        group: str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Send an autocomplete (type 4) interaction with option ``focused`` focused."""
        if focused not in options:
            raise ValueError(f"focused option {focused!r} must be in options")
        return await self._send_command_interaction(
            AUTOCOMPLETE,
            guild_id,
            channel_id,
            user_id,
            name,
            options,
            subcommand=subcommand,
            group=group,
            focused=focused,
            locale=locale,
        )

    async def autocomplete(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
        group: str | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Autocomplete roundtrip; returns the bot's ``choices``."""
        interaction = await self.send_autocomplete(
            guild_id,
            channel_id,
            user_id,
            name,
            options,
            focused,
            subcommand=subcommand,
            group=group,
        )
        callback = await interaction.wait_for_callback(timeout)
        if callback.type != CB_AUTOCOMPLETE_RESULT:
            raise AssertionError(f"expected callback type 8, got {callback.type}")
        return list(callback.data.get("choices", []))

    async def click_button(
        self,
        message: Mapping[str, Any] | int,
        custom_id: str,
        user_id: int,
    ) -> FakeInteraction:
        """Click the button ``custom_id`` on a stored message (type 3 interaction)."""
        stored = self._stored_message(message)
        component = find_component(stored, custom_id)
        if component is None:
            raise ValueError(
                f"no component {custom_id!r} on message {stored['id']}: {find_custom_ids(stored)}"
            )
        data = {"custom_id": custom_id, "component_type": int(component.get("type", 2))}
        return await self._send_component_interaction(stored, user_id, data)

    async def select_menu(
        self,
        message: Mapping[str, Any] | int,
        custom_id: str,
        values: Sequence[str],
        user_id: int,
    ) -> FakeInteraction:
        """Pick ``values`` in the select menu ``custom_id`` of a stored message."""
        stored = self._stored_message(message)
        component = find_component(stored, custom_id)
        if component is None:
            raise ValueError(f"no component {custom_id!r} on message {stored['id']}")
        data = {
            "custom_id": custom_id,
            "component_type": int(component.get("type", 3)),
            "values": [str(v) for v in values],
        }
        return await self._send_component_interaction(stored, user_id, data)

    async def submit_modal(
        self,
        interaction: FakeInteraction,
        values: Mapping[str, str | Sequence[str]],
        user_id: int | None = None,
    ) -> FakeInteraction:
        """Submit the modal the bot answered ``interaction`` with (type 5 interaction)."""
        modal = next((c for c in interaction.callbacks if c.type == CB_MODAL), None)
        if modal is None:
            raise ValueError(f"interaction {interaction.id} was not answered with a modal")
        components = [_modal_submission(c, values) for c in modal.data.get("components", [])]
        data = {"custom_id": modal.data.get("custom_id"), "components": components}
        uid = user_id or interaction.user_id
        guild = self.guilds[interaction.guild_id] if interaction.guild_id else None
        if guild is None:
            raise ValueError("modal submission outside a guild is not supported")
        payload = self._interaction_payload(MODAL_SUBMIT, guild, interaction.channel_id, uid, data)
        if "message" in interaction.payload:
            payload["message"] = interaction.payload["message"]
        return await self._dispatch_interaction(payload)

    # ================================================================== gateway dispatch
    async def dispatch(self, event: str, data: Any, *, guild_id: int | None = None) -> int | None:
        """Dispatch an event to every ready session (covering ``guild_id`` if given).

        Returns the ``perf_counter_ns`` just before the (last) frame was written.
        """
        sent: int | None = None
        for session in self._sessions_for(guild_id):
            sent = await self._dispatch_to(session, event, data)
        return sent

    async def reconnect_gateway(self, shard_id: int | None = None, *, op7: bool = True) -> None:
        """Ask the bot to reconnect (op 7 RECONNECT) or drop its socket (close 4000)."""
        for session in list(self.sessions.values()):
            if shard_id is not None and session.shard_id != shard_id:
                continue
            ws = session.ws
            if ws is None or ws.closed:
                continue
            if op7:
                await ws.send_str(dumps({"op": 7, "d": None, "s": None, "t": None}))
            else:
                await ws.close(code=4000, message=b"Unknown error")

    def _sessions_for(self, guild_id: int | None) -> list[GatewaySession]:
        return [
            s
            for s in self.sessions.values()
            if s.ready and (guild_id is None or s.covers(guild_id))
        ]

    async def _dispatch_to(self, session: GatewaySession, event: str, data: Any) -> int:
        lock = self._session_locks.setdefault(session.session_id, asyncio.Lock())
        async with lock:
            session.seq += 1
            frame = dumps({"op": 0, "t": event, "s": session.seq, "d": data})
            session.buffer.append((session.seq, frame))
            sent_at = time.perf_counter_ns()
            ws = session.ws
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(frame)
                except ConnectionError:
                    _log.debug("gateway socket gone while sending %s", event)
            else:
                _log.debug("session %s disconnected; buffered %s", session.session_id, event)
            return sent_at

    # ================================================================== internals: users
    def _ensure_user(
        self, user_id: int, name: str, *, bot: bool = False, global_name: str | None = None
    ) -> FakeUser:
        user = self.users.get(user_id)
        if user is None:
            user = FakeUser(id=user_id, username=name, global_name=global_name, bot=bot)
            self.users[user_id] = user
        return user

    def _voice_channel(self, guild: FakeGuild, channel_id: int) -> FakeChannel:
        channel = guild.channels.get(channel_id)
        if channel is None or not channel.is_voice:
            raise KeyError(f"{channel_id} is not a voice channel of guild {guild.id}")
        return channel

    def _voice_state_payload(
        self,
        guild: FakeGuild,
        user_id: int,
        channel_id: int | None,
        session_id: str,
        self_mute: bool,
        self_deaf: bool,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "guild_id": str(guild.id),
            "channel_id": str(channel_id) if channel_id is not None else None,
            "user_id": str(user_id),
            "session_id": session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": self_deaf,
            "self_mute": self_mute,
            "self_video": False,
            "self_stream": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        member = guild.members.get(user_id)
        if member is not None:
            data["member"] = member.payload()
        return data

    # ================================================================== internals: interactions
    def _find_command(self, name: str, guild_id: int | None) -> tuple[dict[str, Any] | None, bool]:
        if guild_id is not None:
            for cmd in self.commands.get(guild_id, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd, True
        for cmd in self.commands.get(None, []):
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd, False
        return None, False

    async def _send_command_interaction(
        self,
        itype: int,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        *,
        subcommand: str | None,
        group: str | None,
        focused: str | None,
        locale: str,
    ) -> FakeInteraction:
        guild = self.guilds[guild_id]
        if user_id not in guild.members:
            raise KeyError(f"user {user_id} is not a member of guild {guild_id}")
        path = name.split()
        if group:
            path.append(group)
        if subcommand:
            path.append(subcommand)
        root = path[0]
        command, is_guild = self._find_command(root, guild_id)
        if command is None:
            _log.warning("slash command %r was never registered; guessing option types", root)
        resolved: dict[str, dict[str, Any]] = {}
        built = self._build_options(
            command.get("options") if command else None,
            path[1:],
            options if options is not None else {},
            focused,
            resolved,
            guild,
        )
        data: dict[str, Any] = {
            "id": command["id"] if command else str(self.ids.next()),
            "name": root,
            "type": 1,
        }
        if built:
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        if is_guild:
            data["guild_id"] = str(guild_id)
        payload = self._interaction_payload(itype, guild, channel_id, user_id, data, locale=locale)
        return await self._dispatch_interaction(payload)

    def _build_options(
        self,
        schema: list[dict[str, Any]] | None,
        path: list[str],
        values: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        focused: str | None,
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild,
    ) -> list[dict[str, Any]]:
        if path:
            sub_name = path[0]
            sub_schema = next((o for o in schema or [] if o.get("name") == sub_name), None)
            if sub_schema is not None:
                sub_type = int(sub_schema["type"])
            else:
                sub_type = OPT_SUB_COMMAND if len(path) == 1 else OPT_SUB_COMMAND_GROUP
            return [
                {
                    "name": sub_name,
                    "type": sub_type,
                    "options": self._build_options(
                        sub_schema.get("options") if sub_schema else None,
                        path[1:],
                        values,
                        focused,
                        resolved,
                        guild,
                    ),
                }
            ]
        if not isinstance(values, Mapping):
            return [dict(v) for v in values]
        out: list[dict[str, Any]] = []
        for opt_name, value in values.items():
            opt_schema = next((o for o in schema or [] if o.get("name") == opt_name), None)
            opt_type = int(opt_schema["type"]) if opt_schema else _guess_option_type(value)
            out.append(
                self._option_value(opt_name, opt_type, value, opt_name == focused, resolved, guild)
            )
        return out

    def _option_value(
        self,
        name: str,
        opt_type: int,
        value: Any,
        focused: bool,
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild,
    ) -> dict[str, Any]:
        option: dict[str, Any] = {"name": name, "type": opt_type}
        if focused:
            option["focused"] = True
            option["value"] = value if isinstance(value, str) else str(value)
            return option
        if opt_type == OPT_STRING:
            option["value"] = str(value)
        elif opt_type == OPT_INTEGER:
            option["value"] = int(value)
        elif opt_type == OPT_NUMBER:
            option["value"] = float(value)
        elif opt_type == OPT_BOOLEAN:
            option["value"] = bool(value)
        elif opt_type == OPT_ATTACHMENT:
            if isinstance(value, Mapping):
                att = dict(value)
            else:
                att = self.attachments[int(value)].payload()
            resolved.setdefault("attachments", {})[str(att["id"])] = att
            option["value"] = str(att["id"])
        elif opt_type in (OPT_USER, OPT_MENTIONABLE, OPT_ROLE, OPT_CHANNEL):
            oid = int(getattr(value, "id", value))
            option["value"] = str(oid)
            if opt_type in (OPT_USER, OPT_MENTIONABLE) and oid in self.users:
                self._resolve_user(oid, resolved, guild)
            elif opt_type in (OPT_ROLE, OPT_MENTIONABLE) and oid in guild.roles:
                resolved.setdefault("roles", {})[str(oid)] = guild.roles[oid].payload()
            elif opt_type == OPT_CHANNEL and oid in guild.channels:
                ch = guild.channels[oid].payload()
                ch["permissions"] = str(guild.permissions_for(self.bot_user.id))
                resolved.setdefault("channels", {})[str(oid)] = ch
            else:
                _log.warning("option %s: unknown id %s", name, oid)
        else:
            option["value"] = value
        return option

    def _resolve_user(
        self, user_id: int, resolved: dict[str, dict[str, Any]], guild: FakeGuild
    ) -> None:
        resolved.setdefault("users", {})[str(user_id)] = self.users[user_id].payload()
        member = guild.members.get(user_id)
        if member is not None:
            resolved.setdefault("members", {})[str(user_id)] = member.payload(
                permissions=guild.permissions_for(user_id), with_user=False
            )

    def _interaction_payload(
        self,
        itype: int,
        guild: FakeGuild,
        channel_id: int,
        user_id: int,
        data: dict[str, Any],
        *,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        channel = guild.channels.get(channel_id)
        if channel is None:
            raise KeyError(f"unknown channel {channel_id} in guild {guild.id}")
        member = guild.members[user_id]
        channel_payload = channel.payload()
        channel_payload["permissions"] = str(guild.permissions_for(user_id))
        return {
            "id": str(self.ids.next()),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": channel_payload,
            "member": member.payload(permissions=guild.permissions_for(user_id)),
            "token": secrets.token_urlsafe(48),
            "version": 1,
            "locale": locale,
            "guild_locale": "en-US",
            "app_permissions": str(guild.permissions_for(self.bot_user.id)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }

    async def _send_component_interaction(
        self, message: dict[str, Any], user_id: int, data: dict[str, Any]
    ) -> FakeInteraction:
        guild_id = message.get("guild_id")
        if guild_id is None:
            raise ValueError("component interactions outside guilds are not supported")
        guild = self.guilds[int(guild_id)]
        payload = self._interaction_payload(
            MESSAGE_COMPONENT, guild, int(message["channel_id"]), user_id, data
        )
        payload["message"] = _public_message(message)
        return await self._dispatch_interaction(payload)

    async def _dispatch_interaction(self, payload: dict[str, Any]) -> FakeInteraction:
        guild_id = int(payload["guild_id"])
        sessions = self._sessions_for(guild_id)
        if not sessions:
            raise RuntimeError(f"no ready gateway session covers guild {guild_id}; is the bot up?")
        interaction = FakeInteraction(
            id=int(payload["id"]),
            token=payload["token"],
            type=int(payload["type"]),
            guild_id=guild_id,
            channel_id=int(payload["channel_id"]),
            user_id=int(payload["member"]["user"]["id"]),
            payload=payload,
            fake=self,
        )
        self.interactions[interaction.id] = interaction
        self._interactions_by_token[interaction.token] = interaction
        interaction.sent_at_ns = await self._dispatch_to(sessions[0], "INTERACTION_CREATE", payload)
        self._notify()
        return interaction

    def _stored_message(self, message: Mapping[str, Any] | int) -> dict[str, Any]:
        mid = int(message["id"]) if isinstance(message, Mapping) else int(message)
        try:
            return self.messages[mid]
        except KeyError:
            raise KeyError(f"message {mid} is not stored by the fake") from None

    # ================================================================== internals: messages
    def _store_attachment(
        self, filename: str, data: bytes, content_type: str | None, description: str | None = None
    ) -> StoredAttachment:
        att_id = self.ids.next()
        ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        att = StoredAttachment(
            id=att_id,
            filename=filename,
            content_type=ctype,
            data=data,
            url=f"{self.cdn_url}/attachments/{att_id}/{filename}",
            description=description,
        )
        self.attachments[att_id] = att
        return att

    def _attachments_from_upload(
        self, body: dict[str, Any], files: dict[int, tuple[str, str, bytes]]
    ) -> list[StoredAttachment]:
        described = {
            str(a.get("id")): a for a in body.get("attachments", []) if isinstance(a, Mapping)
        }
        out: list[StoredAttachment] = []
        for index, (filename, ctype, data) in sorted(files.items()):
            meta = described.get(str(index), {})
            out.append(
                self._store_attachment(
                    meta.get("filename") or filename, data, ctype, meta.get("description")
                )
            )
        return out

    def _new_message(
        self,
        *,
        channel_id: int,
        guild_id: int | None,
        body: Mapping[str, Any],
        attachments: Sequence[StoredAttachment],
        message_type: int = 0,
        interaction: FakeInteraction | None = None,
        flags: int | None = None,
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "id": str(self.ids.next()),
            "type": message_type,
            "channel_id": str(channel_id),
            "author": self.bot_user.payload(),
            "content": body.get("content") or "",
            "embeds": list(body.get("embeds") or []),
            "components": list(body.get("components") or []),
            "attachments": [a.payload() for a in attachments],
            "flags": int(body.get("flags") or 0) if flags is None else flags,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "timestamp": iso_now(),
            "edited_timestamp": None,
            "application_id": str(self.application_id),
        }
        if guild_id is not None:
            msg["guild_id"] = str(guild_id)
        for key in ("poll", "sticker_items", "message_reference", "nonce"):
            if body.get(key) is not None:
                msg[key] = body[key]
        if interaction is not None:
            msg["webhook_id"] = str(self.application_id)
            msg["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": self.users[interaction.user_id].payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild_id)},
            }
        self.messages[int(msg["id"])] = msg
        self.message_events.append(
            MessageEvent(
                "create",
                _snapshot(msg),
                time.perf_counter_ns(),
                interaction.id if interaction else None,
            )
        )
        return msg

    def _edit_message(
        self,
        msg: dict[str, Any],
        body: Mapping[str, Any],
        files: dict[int, tuple[str, str, bytes]],
        *,
        clear_loading: bool = False,
        interaction: FakeInteraction | None = None,
    ) -> dict[str, Any]:
        for key in ("content", "embeds", "components", "poll"):
            if key in body:
                value = body[key]
                msg[key] = (value or "") if key == "content" else (value or [])
        if "flags" in body and body["flags"] is not None:
            # The ephemeral bit cannot change after creation.
            msg["flags"] = (int(body["flags"]) & ~FLAG_EPHEMERAL) | (
                int(msg.get("flags", 0)) & FLAG_EPHEMERAL
            )
        new_atts = [a.payload() for a in self._attachments_from_upload(dict(body), files)]
        if "attachments" in body:
            keep_ids = {
                str(a.get("id")) for a in body["attachments"] or [] if isinstance(a, Mapping)
            }
            kept = [a for a in msg.get("attachments", []) if str(a["id"]) in keep_ids]
            msg["attachments"] = kept + new_atts
        elif new_atts:
            msg["attachments"] = list(msg.get("attachments", [])) + new_atts
        if clear_loading:
            msg["flags"] = int(msg.get("flags", 0)) & ~FLAG_LOADING
        msg["edited_timestamp"] = iso_now()
        self.message_events.append(
            MessageEvent(
                "edit",
                _snapshot(msg),
                time.perf_counter_ns(),
                interaction.id if interaction else None,
            )
        )
        return msg

    def _delete_message(self, message_id: int) -> bool:
        msg = self.messages.pop(message_id, None)
        if msg is None:
            return False
        self.message_events.append(MessageEvent("delete", _snapshot(msg), time.perf_counter_ns()))
        return True

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """Stored messages in a channel (interaction responses included), oldest first."""
        return [m for m in self.messages.values() if int(m["channel_id"]) == channel_id]

    def _find_channel(self, channel_id: int) -> FakeChannel | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild.channels[channel_id]
        return self.dm_channels.get(channel_id)

    # ================================================================== HTTP plumbing
    def inject_error(
        self,
        method: str,
        path_contains: str,
        status: int = 500,
        *,
        message: str = "injected error",
        code: int = 0,
        count: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Make the next ``count`` matching REST requests fail (429 adds ``retry_after``)."""
        body: dict[str, Any] = {"message": message, "code": code}
        if status == 429:
            body.update(retry_after=retry_after or 0.01, **{"global": False})
        self._injected.append(InjectedError(method.upper(), path_contains, status, body, count))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RequestRecord(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            at_ns=time.perf_counter_ns(),
        )
        if request.path.startswith("/api/"):
            request[_RECORD_KEY] = len(self.requests)
            self.requests.append(record)
            for inj in self._injected:
                if (
                    inj.remaining > 0
                    and inj.method in (request.method, "*")
                    and (inj.path_contains in request.path)
                ):
                    inj.remaining -= 1
                    _log.info("injecting %d for %s %s", inj.status, request.method, request.path)
                    headers = {"Content-Type": "application/json"}
                    if inj.status == 429:
                        headers["Retry-After"] = str(inj.body.get("retry_after", 0.01))
                        headers["X-RateLimit-Scope"] = "user"
                    return web.Response(
                        body=dumps(inj.body).encode(), status=inj.status, headers=headers
                    )
            if self.token is not None and not _is_token_free(request.path):
                auth = request.headers.get("Authorization", "")
                if auth != f"Bot {self.token}":
                    _log.warning("rejecting %s %s: bad Authorization", request.method, request.path)
                    return error_response(401, "401: Unauthorized")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return await self._unknown(request)
        except web.HTTPMethodNotAllowed:
            return await self._unknown(request)

    async def _unknown(self, request: web.Request) -> web.Response:
        record = RequestRecord(
            request.method, request.path, dict(request.query), time.perf_counter_ns()
        )
        self.unknown_requests.append(record)
        _log.warning("fakediscord: unknown route %s %s", request.method, request.path)
        return error_response(404, f"404: Not Found ({request.method} {request.path})")

    async def _read_body(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[int, tuple[str, str, bytes]]]:
        """JSON body (or ``payload_json`` of a multipart body) and uploaded files by index."""
        files: dict[int, tuple[str, str, bytes]] = {}
        body: Any = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                name = part.name or ""
                raw = await part.read(decode=False)
                if name == "payload_json":
                    body = json.loads(raw)
                elif name.startswith("files[") and name.endswith("]"):
                    index = int(name[6:-1])
                    files[index] = (
                        part.filename or f"file{index}",
                        part.headers.get("Content-Type", "application/octet-stream"),
                        bytes(raw),
                    )
                elif name.startswith("file"):
                    files[len(files)] = (
                        part.filename or name,
                        part.headers.get("Content-Type", "application/octet-stream"),
                        bytes(raw),
                    )
        elif request.can_read_body:
            raw_text = await request.text()
            body = json.loads(raw_text) if raw_text else {}
        record_index: int | None = request.get(_RECORD_KEY)
        if record_index is not None and record_index < len(self.requests):
            last = self.requests[record_index]
            self.requests[record_index] = RequestRecord(
                last.method, last.path, last.query, last.at_ns, body
            )
        return (body if isinstance(body, dict) else {"_list": body}), files

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        p = API_PREFIX
        r.add_get("/gateway", self._gateway)
        r.add_get("/attachments/{att_id:[0-9]+}/{filename}", self._cdn)
        r.add_get("/attachments/{channel_id:[0-9]+}/{att_id:[0-9]+}/{filename}", self._cdn)
        r.add_get(p + "/users/@me", self._get_me)
        r.add_get(p + "/users/{user_id:[0-9]+}", self._get_user)
        r.add_post(p + "/users/@me/channels", self._create_dm)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway_bot)
        r.add_get(p + "/applications/@me", self._get_application)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        cmds = p + "/applications/{app_id:[0-9]+}"
        for prefix in (cmds, cmds + "/guilds/{guild_id:[0-9]+}"):
            r.add_get(prefix + "/commands", self._get_commands)
            r.add_put(prefix + "/commands", self._put_commands)
            r.add_post(prefix + "/commands", self._post_command)
            r.add_get(prefix + "/commands/{command_id:[0-9]+}", self._get_command)
            r.add_patch(prefix + "/commands/{command_id:[0-9]+}", self._patch_command)
            r.add_delete(prefix + "/commands/{command_id:[0-9]+}", self._delete_command)
        r.add_post(p + "/interactions/{interaction_id:[0-9]+}/{token}/callback", self._callback)
        hook = p + "/webhooks/{app_id:[0-9]+}/{token}"
        r.add_post(hook, self._followup)
        r.add_get(hook + "/messages/{message_id}", self._webhook_get_message)
        r.add_patch(hook + "/messages/{message_id}", self._webhook_edit_message)
        r.add_delete(hook + "/messages/{message_id}", self._webhook_delete_message)
        ch = p + "/channels/{channel_id:[0-9]+}"
        r.add_get(ch, self._get_channel)
        r.add_get(ch + "/messages", self._list_messages)
        r.add_post(ch + "/messages", self._create_message)
        r.add_get(ch + "/messages/{message_id:[0-9]+}", self._get_message)
        r.add_patch(ch + "/messages/{message_id:[0-9]+}", self._edit_channel_message)
        r.add_delete(ch + "/messages/{message_id:[0-9]+}", self._delete_channel_message)
        r.add_post(ch + "/typing", self._no_content)
        r.add_put(ch + "/messages/{message_id:[0-9]+}/reactions/{emoji}/@me", self._no_content)
        r.add_delete(ch + "/messages/{message_id:[0-9]+}/reactions/{emoji}/@me", self._no_content)
        g = p + "/guilds/{guild_id:[0-9]+}"
        r.add_get(g, self._get_guild)
        r.add_get(g + "/channels", self._get_guild_channels)
        r.add_get(g + "/roles", self._get_guild_roles)
        r.add_get(g + "/members", self._list_members)
        r.add_get(g + "/members/{user_id:[0-9]+}", self._get_member)
        r.add_route("*", "/{tail:.*}", self._unknown)

    # ================================================================== REST handlers
    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _cdn(self, request: web.Request) -> web.Response:
        att = self.attachments.get(int(request.match_info["att_id"]))
        if att is None:
            return error_response(404, "404: Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})

    async def _get_me(self, request: web.Request) -> web.Response:
        data = self.bot_user.payload()
        data.update(verified=True, mfa_enabled=False, locale="en-US", email=None)
        return json_response(data)

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            return error_response(404, "Unknown User", 10013)
        return json_response(user.payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self._read_body(request)
        uid = int(body.get("recipient_id", 0))
        user = self.users.get(uid)
        if user is None:
            return error_response(404, "Unknown User", 10013)
        for ch in self.dm_channels.values():
            if ch.recipients and ch.recipients[0].id == uid:
                return json_response(ch.payload())
        ch = FakeChannel(self.ids.next(), None, "", DM, recipients=[user])
        self.dm_channels[ch.id] = ch
        return json_response(ch.payload())

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "url": self.gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_application(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "icon": None,
                "description": "",
                "summary": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self._owner_payload(),
                "team": None,
                "flags": self.application_flags,
                "bot": self.bot_user.payload(),
                "rpc_origins": [],
            }
        )

    def _owner_payload(self) -> dict[str, Any]:
        return FakeUser(id=1, username="app-owner").payload()

    # -- application commands
    def _scope(self, request: web.Request) -> int | None:
        gid = request.match_info.get("guild_id")
        return int(gid) if gid else None

    def _normalize_command(
        self, raw: Mapping[str, Any], scope: int | None, existing: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        cmd = dict(raw)
        cmd.setdefault("type", 1)
        cmd.setdefault("description", "")
        previous = next(
            (c for c in existing if c["name"] == cmd["name"] and c.get("type", 1) == cmd["type"]),
            None,
        )
        cmd["id"] = previous["id"] if previous else str(self.ids.next())
        cmd["application_id"] = str(self.application_id)
        cmd["version"] = str(self.ids.next())
        perms = cmd.get("default_member_permissions")
        cmd["default_member_permissions"] = str(perms) if perms is not None else None
        cmd.setdefault("nsfw", False)
        cmd.setdefault("options", [])
        if scope is not None:
            cmd["guild_id"] = str(scope)
        return cmd

    async def _get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.commands.get(self._scope(request), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await self._read_body(request)
        raw_list = body.get("_list", [])
        self.command_uploads.append((scope, list(raw_list)))
        existing = self.commands.get(scope, [])
        self.commands[scope] = [self._normalize_command(c, scope, existing) for c in raw_list]
        _log.debug("registered %d commands for %s", len(raw_list), scope or "global")
        self._notify()
        return json_response(self.commands[scope])

    async def _post_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await self._read_body(request)
        existing = self.commands.setdefault(scope, [])
        cmd = self._normalize_command(body, scope, existing)
        self.commands[scope] = [c for c in existing if c["id"] != cmd["id"]] + [cmd]
        self._notify()
        return json_response(cmd, status=201)

    def _command_or_none(self, request: web.Request) -> dict[str, Any] | None:
        cid = request.match_info["command_id"]
        return next(
            (c for c in self.commands.get(self._scope(request), []) if c["id"] == cid), None
        )

    async def _get_command(self, request: web.Request) -> web.Response:
        cmd = self._command_or_none(request)
        return (
            json_response(cmd) if cmd else error_response(404, "Unknown application command", 10063)
        )

    async def _patch_command(self, request: web.Request) -> web.Response:
        cmd = self._command_or_none(request)
        if cmd is None:
            return error_response(404, "Unknown application command", 10063)
        body, _ = await self._read_body(request)
        cmd.update({k: v for k, v in body.items() if k not in ("id", "application_id")})
        self._notify()
        return json_response(cmd)

    async def _delete_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        cid = request.match_info["command_id"]
        self.commands[scope] = [c for c in self.commands.get(scope, []) if c["id"] != cid]
        self._notify()
        return web.Response(status=204)

    # -- interactions
    async def _callback(self, request: web.Request) -> web.Response:
        received = time.perf_counter_ns()
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            return error_response(404, "Unknown interaction", 10062)
        body, files = await self._read_body(request)
        if interaction.acknowledged:
            _log.warning("interaction %s acknowledged twice", interaction.id)
            return error_response(400, "Interaction has already been acknowledged.", 40060)
        ctype = int(body.get("type", 0))
        data = dict(body.get("data") or {})
        stored_files: list[StoredAttachment] = []
        message: dict[str, Any] | None = None
        loading = False
        if ctype == CB_CHANNEL_MESSAGE:
            atts = self._attachments_from_upload(data, files)
            stored_files = atts
            message = self._new_message(
                channel_id=interaction.channel_id,
                guild_id=interaction.guild_id,
                body=data,
                attachments=atts,
                interaction=interaction,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            interaction.original_message_id = int(message["id"])
        elif ctype == CB_DEFERRED_CHANNEL_MESSAGE:
            loading = True
            flags = (int(data.get("flags") or 0) & FLAG_EPHEMERAL) | FLAG_LOADING
            message = self._new_message(
                channel_id=interaction.channel_id,
                guild_id=interaction.guild_id,
                body={},
                attachments=[],
                interaction=interaction,
                flags=flags,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            interaction.original_message_id = int(message["id"])
        elif ctype in (CB_DEFERRED_UPDATE_MESSAGE, CB_UPDATE_MESSAGE):
            source = interaction.payload.get("message")
            if source is None or int(source["id"]) not in self.messages:
                return error_response(
                    400, "Invalid interaction response type for this interaction", 50035
                )
            message = self.messages[int(source["id"])]
            interaction.original_message_id = int(message["id"])
            if ctype == CB_UPDATE_MESSAGE:
                before = {a["id"] for a in message.get("attachments", [])}
                self._edit_message(message, data, files, interaction=interaction)
                stored_files = [
                    self.attachments[int(a["id"])]
                    for a in message.get("attachments", [])
                    if a["id"] not in before
                ]
        record = CallbackRecord(type=ctype, data=data, received_at_ns=received, files=stored_files)
        interaction.callbacks.append(record)
        self._notify()
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        info: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        response: dict[str, Any] = {"interaction": info}
        if message is not None:
            info["response_message_id"] = message["id"]
            info["response_message_loading"] = loading
            info["response_message_ephemeral"] = bool(int(message.get("flags", 0)) & FLAG_EPHEMERAL)
            response["resource"] = {"type": ctype, "message": _public_message(message)}
        else:
            response["resource"] = {"type": ctype}
        return json_response(response)

    def _interaction_for_token(self, token: str) -> FakeInteraction | None:
        return self._interactions_by_token.get(token)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_token(request.match_info["token"])
        if interaction is None:
            return error_response(404, "Unknown Webhook", 10015)
        if not interaction.acknowledged:
            return error_response(404, "Unknown Webhook", 10015)
        body, files = await self._read_body(request)
        atts = self._attachments_from_upload(body, files)
        message = self._new_message(
            channel_id=interaction.channel_id,
            guild_id=interaction.guild_id,
            body=body,
            attachments=atts,
            interaction=interaction,
            flags=int(body.get("flags") or 0),
        )
        interaction.followup_ids.append(int(message["id"]))
        self._notify()
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(_public_message(message))
        return web.Response(status=204)

    def _webhook_message(
        self, request: web.Request
    ) -> tuple[FakeInteraction | None, dict[str, Any] | None]:
        interaction = self._interaction_for_token(request.match_info["token"])
        if interaction is None:
            return None, None
        mid = request.match_info["message_id"]
        if mid == "@original":
            if interaction.original_message_id is None:
                return interaction, None
            return interaction, self.messages.get(interaction.original_message_id)
        try:
            return interaction, self.messages.get(int(mid))
        except ValueError:
            return interaction, None

    async def _webhook_get_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        if interaction is None:
            return error_response(404, "Unknown Webhook", 10015)
        if message is None:
            return error_response(404, "Unknown Message", 10008)
        return json_response(_public_message(message))

    async def _webhook_edit_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        if interaction is None:
            return error_response(404, "Unknown Webhook", 10015)
        if message is None:
            return error_response(404, "Unknown Message", 10008)
        body, files = await self._read_body(request)
        is_original = request.match_info["message_id"] == "@original"
        self._edit_message(message, body, files, clear_loading=is_original, interaction=interaction)
        self._notify()
        return json_response(_public_message(message))

    async def _webhook_delete_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        if interaction is None:
            return error_response(404, "Unknown Webhook", 10015)
        if message is None:
            return error_response(404, "Unknown Message", 10008)
        self._delete_message(int(message["id"]))
        self._notify()
        return web.Response(status=204)

    # -- channels and messages
    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._find_channel(int(request.match_info["channel_id"]))
        if channel is None:
            return error_response(404, "Unknown Channel", 10003)
        return json_response(channel.payload())

    async def _list_messages(self, request: web.Request) -> web.Response:
        cid = int(request.match_info["channel_id"])
        if self._find_channel(cid) is None:
            return error_response(404, "Unknown Channel", 10003)
        limit = int(request.query.get("limit", "50"))
        msgs = sorted(self.channel_messages(cid), key=lambda m: int(m["id"]), reverse=True)
        return json_response([_public_message(m) for m in msgs[:limit]])

    async def _create_message(self, request: web.Request) -> web.Response:
        cid = int(request.match_info["channel_id"])
        channel = self._find_channel(cid)
        if channel is None:
            return error_response(404, "Unknown Channel", 10003)
        body, files = await self._read_body(request)
        atts = self._attachments_from_upload(body, files)
        message = self._new_message(
            channel_id=cid,
            guild_id=channel.guild_id,
            body=body,
            attachments=atts,
            message_type=19 if body.get("message_reference") else 0,
        )
        self._notify()
        return json_response(_public_message(message))

    def _channel_message(self, request: web.Request) -> dict[str, Any] | None:
        msg = self.messages.get(int(request.match_info["message_id"]))
        if msg is None or msg["channel_id"] != request.match_info["channel_id"]:
            return None
        return msg

    async def _get_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request)
        if msg is None:
            return error_response(404, "Unknown Message", 10008)
        return json_response(_public_message(msg))

    async def _edit_channel_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request)
        if msg is None:
            return error_response(404, "Unknown Message", 10008)
        body, files = await self._read_body(request)
        self._edit_message(msg, body, files)
        self._notify()
        return json_response(_public_message(msg))

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request)
        if msg is None:
            return error_response(404, "Unknown Message", 10008)
        self._delete_message(int(msg["id"]))
        self._notify()
        return web.Response(status=204)

    # -- guilds
    def _guild(self, request: web.Request) -> FakeGuild | None:
        return self.guilds.get(int(request.match_info["guild_id"]))

    async def _get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        if guild is None:
            return error_response(404, "Unknown Guild", 10004)
        data = guild.payload(self.bot_user.id)
        for key in ("channels", "members", "voice_states", "presences", "threads"):
            data.pop(key, None)
        data["approximate_member_count"] = len(guild.members)
        return json_response(data)

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        if guild is None:
            return error_response(404, "Unknown Guild", 10004)
        return json_response([c.payload() for c in guild.channels.values()])

    async def _get_guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        if guild is None:
            return error_response(404, "Unknown Guild", 10004)
        return json_response([r.payload() for r in guild.roles.values()])

    async def _list_members(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        if guild is None:
            return error_response(404, "Unknown Guild", 10004)
        limit = int(request.query.get("limit", "1"))
        after = int(request.query.get("after", "0"))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)
        return json_response([m.payload() for m in members[:limit]])

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        if guild is None:
            return error_response(404, "Unknown Guild", 10004)
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            return error_response(404, "Unknown Member", 10007)
        return json_response(member.payload())

    # ================================================================== main gateway
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._gateway_sockets.add(ws)
        _log.debug("gateway connection from %s (%s)", request.remote, request.query_string)
        session: GatewaySession | None = None
        await ws.send_str(
            dumps(
                {
                    "op": 10,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    _log.debug("ignoring non-text gateway frame %s", msg.type)
                    continue
                frame = json.loads(msg.data)
                self.gateway_frames_received.append(frame)
                op = frame.get("op")
                d = frame.get("d")
                if op == 1:
                    if session is not None:
                        session.heartbeats += 1
                        if isinstance(d, int):
                            session.last_heartbeat_seq = d
                    await ws.send_str(dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    session = await self._on_identify(ws, d or {})
                    if session is None:
                        break
                elif op == 6:
                    session = await self._on_resume(ws, d or {})
                    if session is None:
                        continue
                elif session is None:
                    _log.warning("gateway op %s before IDENTIFY; closing 4003", op)
                    await ws.close(code=4003, message=b"Not authenticated")
                    break
                elif op == 4:
                    await self._on_voice_state(session, d or {})
                elif op == 8:
                    await self._on_request_members(session, d or {})
                elif op == 3:
                    _log.debug("presence update: %s", d)
                else:
                    _log.debug("ignoring gateway op %s", op)
        finally:
            self._gateway_sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            self._notify()
            _log.debug("gateway connection closed (code %s)", ws.close_code)
        return ws

    async def _on_identify(
        self, ws: web.WebSocketResponse, d: dict[str, Any]
    ) -> GatewaySession | None:
        if self.token is not None and d.get("token") != self.token:
            _log.warning("IDENTIFY with a wrong token; closing 4004")
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard = d.get("shard") or [0, 1]
        shard_id, shard_count = int(shard[0]), int(shard[1])
        if not 0 <= shard_id < shard_count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return None
        for old in self.sessions.values():
            if old.shard_id == shard_id and old.shard_count == shard_count and old.ready:
                # A new IDENTIFY replaces the shard's previous session.
                old.ready = False
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            shard_id=shard_id,
            shard_count=shard_count,
            intents=int(d.get("intents", 0)),
            ws=ws,
        )
        self.sessions[session.session_id] = session
        guilds = [g for g in self.guilds.values() if session.covers(g.id)]
        ready = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "shard": [shard_id, shard_count],
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
        }
        await self._dispatch_to(session, "READY", ready)
        for guild in guilds:
            await self._dispatch_to(session, "GUILD_CREATE", guild.payload(self.bot_user.id))
        session.ready = True
        _log.info("shard %d/%d identified (%d guilds)", shard_id, shard_count, len(guilds))
        self._notify()
        return session

    async def _on_resume(
        self, ws: web.WebSocketResponse, d: dict[str, Any]
    ) -> GatewaySession | None:
        session = self.sessions.get(str(d.get("session_id")))
        if session is None or (self.token is not None and d.get("token") != self.token):
            _log.info("RESUME of unknown session; sending INVALID_SESSION")
            await ws.send_str(dumps({"op": 9, "d": False, "s": None, "t": None}))
            return None
        last_seq = int(d.get("seq") or 0)
        lock = self._session_locks.setdefault(session.session_id, asyncio.Lock())
        async with lock:
            old = session.ws
            session.ws = ws
            session.resumes += 1
            if old is not None and old is not ws and not old.closed:
                await old.close(code=4000)
            for seq, frame in list(session.buffer):
                if seq > last_seq:
                    await ws.send_str(frame)
        await self._dispatch_to(session, "RESUMED", {})
        self._notify()
        return session

    async def _on_voice_state(self, session: GatewaySession, d: dict[str, Any]) -> None:
        guild = self.guilds.get(int(d.get("guild_id") or 0))
        if guild is None:
            _log.warning("voice state update for unknown guild %s", d.get("guild_id"))
            return
        raw_channel = d.get("channel_id")
        channel_id = int(raw_channel) if raw_channel is not None else None
        self.bot_voice_requests.append((guild.id, channel_id))
        self_mute = bool(d.get("self_mute", False))
        self_deaf = bool(d.get("self_deaf", False))
        bot_id = self.bot_user.id
        previous = guild.voice_states.get(bot_id)
        if channel_id is None:
            guild.voice_states.pop(bot_id, None)
            # The client is about to close its UDP socket: see VoiceServer.wake_client.
            self.voice.wake_guild_clients(guild.id)
            await self.dispatch(
                "VOICE_STATE_UPDATE",
                self._voice_state_payload(
                    guild, bot_id, None, session.session_id, self_mute, self_deaf
                ),
                guild_id=guild.id,
            )
            self._notify()
            return
        channel = guild.channels.get(channel_id)
        if channel is None or not channel.is_voice:
            _log.warning("bot asked to join non-voice channel %s", channel_id)
            return
        guild.voice_states[bot_id] = VoiceStateRecord(
            bot_id, channel_id, session.session_id, self_mute, self_deaf
        )
        state_update = self._voice_state_payload(
            guild, bot_id, channel_id, session.session_id, self_mute, self_deaf
        )
        active = self.voice.active_connection(guild.id)
        live = active is not None and active.ready and active.ws is not None
        if previous is not None and live:
            # Mute/deaf change or a move: Discord only sends the state update.
            await self.dispatch("VOICE_STATE_UPDATE", state_update, guild_id=guild.id)
        else:
            token = secrets.token_hex(8)
            self._voice_tokens.setdefault(guild.id, set()).add(token)
            server_update = {
                "token": token,
                "guild_id": str(guild.id),
                "endpoint": self.voice_endpoint,
            }
            if previous is None:
                await self.dispatch("VOICE_STATE_UPDATE", state_update, guild_id=guild.id)
                await self.dispatch("VOICE_SERVER_UPDATE", server_update, guild_id=guild.id)
            else:
                # Re-join while still in a channel (e.g. discord.py resuming after a 4015):
                # a connected VoiceConnectionState only reaches "got both updates" when
                # the server update comes first.
                await self.dispatch("VOICE_SERVER_UPDATE", server_update, guild_id=guild.id)
                await self.dispatch("VOICE_STATE_UPDATE", state_update, guild_id=guild.id)
        self._notify()

    async def _on_request_members(self, session: GatewaySession, d: dict[str, Any]) -> None:
        guild_ids = d.get("guild_id")
        for gid in guild_ids if isinstance(guild_ids, list) else [guild_ids]:
            guild = self.guilds.get(int(gid or 0))
            if guild is None:
                continue
            wanted = {int(u) for u in d.get("user_ids") or []}
            members = [m for m in guild.members.values() if not wanted or m.id in wanted]
            await self._dispatch_to(
                session,
                "GUILD_MEMBERS_CHUNK",
                {
                    "guild_id": str(guild.id),
                    "members": [m.payload() for m in members],
                    "chunk_index": 0,
                    "chunk_count": 1,
                    "nonce": d.get("nonce"),
                    "not_found": [],
                },
            )

    def _validate_voice(self, guild_id: int, user_id: int, session_id: str, token: str) -> bool:
        if user_id != self.bot_user.id:
            return False
        if token not in self._voice_tokens.get(guild_id, set()):
            return False
        if session_id not in self.sessions:
            _log.warning("voice IDENTIFY with unknown session id %s", session_id)
        return True


# ====================================================================== helpers
_TOKEN_FREE_PREFIXES = ("/webhooks/", "/interactions/")


def _is_token_free(path: str) -> bool:
    # /api/vN/webhooks/... and /api/vN/interactions/... are authenticated by their token.
    rest = "/" + (path.split("/", 3)[-1] if path.count("/") >= 3 else path)
    return rest == "/gateway" or any(rest.startswith(p) for p in _TOKEN_FREE_PREFIXES)


def _public_message(msg: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(dumps(msg))  # type: ignore[no-any-return]


def _snapshot(msg: Mapping[str, Any]) -> dict[str, Any]:
    return _public_message(msg)


def _guess_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return OPT_BOOLEAN
    if isinstance(value, int):
        return OPT_INTEGER
    if isinstance(value, float):
        return OPT_NUMBER
    if isinstance(value, Mapping) and "filename" in value:
        return OPT_ATTACHMENT
    if isinstance(value, (FakeUser, FakeMember)):
        return OPT_USER
    if isinstance(value, FakeChannel):
        return OPT_CHANNEL
    if isinstance(value, FakeRole):
        return OPT_ROLE
    return OPT_STRING


def iter_components(components: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    """Depth-first walk over (v1 and v2) components: rows, containers, sections, labels."""
    for comp in components:
        yield comp
        for key in ("components",):
            children = comp.get(key)
            if isinstance(children, list):
                yield from iter_components(children)
        for key in ("accessory", "component"):
            child = comp.get(key)
            if isinstance(child, Mapping):
                yield from iter_components([child])


def find_component(message: Mapping[str, Any], custom_id: str) -> Mapping[str, Any] | None:
    for comp in iter_components(message.get("components") or []):
        if comp.get("custom_id") == custom_id:
            return comp
    return None


def find_custom_ids(message: Mapping[str, Any]) -> list[str]:
    """Every ``custom_id`` on a message's components, in document order."""
    return [
        str(c["custom_id"])
        for c in iter_components(message.get("components") or [])
        if c.get("custom_id")
    ]


def find_buttons(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every button (type 2) on a message."""
    return [c for c in iter_components(message.get("components") or []) if c.get("type") == 2]


def _modal_submission(
    component: Mapping[str, Any], values: Mapping[str, str | Sequence[str]]
) -> dict[str, Any]:
    ctype = int(component.get("type", 0))
    if ctype == 1:
        return {
            "type": 1,
            "components": [_modal_submission(c, values) for c in component.get("components", [])],
        }
    if ctype == 18 and isinstance(component.get("component"), Mapping):
        return {"type": 18, "component": _modal_submission(component["component"], values)}
    custom_id = component.get("custom_id")
    out: dict[str, Any] = {"type": ctype}
    if custom_id is not None:
        out["custom_id"] = custom_id
        value = values.get(str(custom_id), component.get("value", ""))
        if ctype == 4:
            out["value"] = value if isinstance(value, str) else "".join(value)
        else:
            out["values"] = [value] if isinstance(value, str) else list(value)
    return out
