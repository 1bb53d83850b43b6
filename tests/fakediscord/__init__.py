"""A fake Discord on loopback that the real discord.py 2.7 client can talk to.

:class:`FakeDiscord` serves, on ``127.0.0.1`` with random ports:

* the REST API under ``/api/v10`` (users, gateway, applications/commands,
  interaction callbacks, webhooks/followups, channel messages, guilds, members) and a
  CDN route ``/attachments/{id}/{filename}``; unknown routes are logged, recorded in
  ``fake.unknown_requests`` and answered 404 ``{"message", "code": 0}``. JSON bodies are
  sent with ``Content-Type: application/json`` exactly (discord.py ignores anything else);
* the main gateway (``ws://127.0.0.1:PORT/gateway``, plain-text JSON frames, compression
  requests ignored): HELLO, IDENTIFY -> READY + GUILD_CREATE (per shard:
  ``(guild_id >> 22) % shard_count == shard_id``), heartbeats, RESUME with replay,
  voice state (op 4) -> VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE, member requests;
* the voice gateway v8 over TLS (``wss://127.0.0.1:VPORT/?v=8``) with a self-signed
  certificate for IP 127.0.0.1 made at startup, and the voice UDP endpoint (IP
  discovery, ``aead_xchacha20_poly1305_rtpsize`` decryption, per-guild packet records).

Quick start (in-process bot)::

    from tests.fakediscord import FakeDiscord, decode_opus_to_pcm
    from tests.fakediscord.fixtures import discord_py_pointed_at, running_client

    async with FakeDiscord() as fake:
        guild = await fake.add_guild()
        alice = await fake.add_member(guild.id, name="alice")
        with discord_py_pointed_at(fake):
            bot = MyBot(intents=discord.Intents.default(), guild_ready_timeout=0.1)
            async with running_client(bot, fake):
                await fake.wait_for_commands()
                await fake.set_user_voice(guild.id, alice.id, guild.voice_channel.id)
                inter = await fake.send_slash_command(
                    guild.id, guild.text_channel.id, alice.id, "play", {"sound": "beep"}
                )
                cb = await inter.wait_for_callback()
                msg = await inter.wait_for_original()
                packets = await fake.wait_for_silence_end(guild.id)
                pcm = decode_opus_to_pcm(p.payload for p in packets)

Driving and observing (all ``async`` unless noted)
--------------------------------------------------
* setup: ``add_guild``, ``add_member``, ``add_role``, ``add_channel``, ``set_user_voice``,
  ``disconnect_bot_from_voice``; each waits (``sync=True``) until a connected client has
  parsed the event, via :meth:`FakeDiscord.sync_gateway` (an op 1 heartbeat barrier);
  ``add_attachment`` (sync) stores bytes on the fake CDN;
* interactions: ``send_slash_command``, ``send_autocomplete``/``autocomplete``,
  ``click_button``, ``select_menu``, ``submit_modal`` return a :class:`FakeInteraction`
  (``sent_at_ns`` = ``perf_counter_ns`` right before the frame was written) with
  ``wait_for_callback``, ``wait_for_original``, ``wait_for_followup``;
* records: ``commands``, ``command_uploads``, ``messages``, ``message_events``,
  ``interactions``, ``requests``, ``unknown_requests``, ``sessions``,
  ``audio_packets(guild_id)``, ``speaking_events``; generic ``wait_for(predicate)``;
* voice: ``wait_for_voice_connection``, ``wait_for_bot_voice``, ``wait_for_audio``,
  ``wait_for_silence_end`` (playback end = five ``f8 ff fe`` frames; ``pause()`` sends
  them too), ``close_voice_websocket`` (4015 makes discord.py resume);
* faults: ``inject_error`` (REST), ``reconnect_gateway`` (op 7 or close 4000).

Trusting the voice TLS certificate
----------------------------------
discord.py opens ``wss://{endpoint}`` with its aiohttp session, whose connector uses
aiohttp's module-level verified ``SSLContext``. aiohttp builds that context **when it
is imported**, so:

* **Subprocess bot**: set ``SSL_CERT_FILE=str(fake.cert_path)`` in its environment
  (``fake.client_env(os.environ)`` also sets ``DISCORD_API_BASE_URL``,
  ``DISCORD_GATEWAY_URL`` and ``DISCORD_TOKEN``). ``ssl.create_default_context()``
  honours the variable at import time in the child. It replaces the system CA bundle
  for that process, which does not matter on loopback.
* **In-process bot**: setting ``SSL_CERT_FILE`` is too late once aiohttp is imported.
  Either call :func:`trust_cert_in_process` (``discord_py_pointed_at`` does), which adds
  the certificate to aiohttp's shared verified context (additive, system CAs stay), or
  give the client its own connector:
  ``Bot(..., connector=aiohttp.TCPConnector(limit=0, ssl=fake.client_ssl_context()))``.

Notes
-----
* discord.py's ``Client`` connects straight to ``DiscordWebSocket.DEFAULT_GATEWAY``;
  only ``AutoShardedClient`` calls ``GET /gateway/bot``. ``AutoShardedClient`` sleeps
  5 s before each additional shard's IDENTIFY (``before_identify_hook``); override it in
  tests.
* ``guild_ready_timeout`` (default 2 s) delays ``on_ready``; pass e.g. 0.1.
* Without the members intent discord.py caches only members seen in voice states (and
  itself): ``guild.get_member()`` is None for others even though GUILD_CREATE lists them.
* discord.py reuses one ``VoiceState`` object per member; an ``on_voice_state_update``
  handler that runs after a later update sees the later channel in ``after``.
* discord.py's voice ``SocketReader`` thread waits in ``select()`` (30 s) on its UDP
  socket even when idle; after a voice reconnect (new socket) it would miss the
  IP-discovery reply. The fake sends one small RTCP-like datagram to the client's
  socket whenever a voice websocket closes or the bot leaves voice, as Discord's own
  traffic would, so 4006/4000/1006 reconnects complete quickly.
* Not modelled: DAVE end-to-end encryption (``dave_protocol_version`` is always 0),
  channel permission overwrites, rate-limit headers (except injected 429s), gateway
  MESSAGE_CREATE echoes of the bot's own messages.
* Every method must run on the loop the fake was started on. The fake and an
  in-process bot share that loop, so measured latencies include the bot's own work.
"""

from __future__ import annotations

from ._util import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    CONNECT,
    DEFAULT_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    MANAGE_GUILD,
    OPUS_SILENCE,
    SEND_MESSAGES,
    SPEAK,
    VIEW_CHANNEL,
    shard_for,
)
from .audio import (
    OggOpusSource,
    audio_frames,
    decode_opus_to_pcm,
    dominant_frequency,
    is_ogg_header_packet,
    is_silence_frame,
    make_sine_ogg,
    read_ogg_opus_packets,
    rms,
    split_playbacks,
)
from .models import (
    CallbackRecord,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeRole,
    FakeUser,
    GatewaySession,
    MessageEvent,
    RequestRecord,
    StoredAttachment,
)
from .server import FakeDiscord, find_buttons, find_component, find_custom_ids, iter_components
from .tls import SelfSignedCert, generate_self_signed_cert, trust_cert_in_process
from .voice import RtpPacket, SpeakingEvent, VoiceConnection, decrypt_rtpsize_packet

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "CONNECT",
    "DEFAULT_PERMISSIONS",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "MANAGE_GUILD",
    "OPUS_SILENCE",
    "SEND_MESSAGES",
    "SPEAK",
    "VIEW_CHANNEL",
    "CallbackRecord",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "GatewaySession",
    "MessageEvent",
    "OggOpusSource",
    "RequestRecord",
    "RtpPacket",
    "SelfSignedCert",
    "SpeakingEvent",
    "StoredAttachment",
    "VoiceConnection",
    "audio_frames",
    "decode_opus_to_pcm",
    "decrypt_rtpsize_packet",
    "dominant_frequency",
    "find_buttons",
    "find_component",
    "find_custom_ids",
    "generate_self_signed_cert",
    "is_ogg_header_packet",
    "is_silence_frame",
    "iter_components",
    "make_sine_ogg",
    "read_ogg_opus_packets",
    "rms",
    "shard_for",
    "split_playbacks",
    "trust_cert_in_process",
]
