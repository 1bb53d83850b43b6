"""Fake Discord voice server: TLS voice gateway v8 + UDP RTP receiver.

The voice gateway speaks the JSON opcodes discord.py 2.7 uses (no DAVE: the
SESSION_DESCRIPTION carries ``dave_protocol_version: 0``). The UDP endpoint
answers IP discovery, decrypts ``aead_xchacha20_poly1305_rtpsize`` RTP packets
and records every Opus payload with its arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import nacl.exceptions
import nacl.secret
from aiohttp import WSMsgType, web

from ._util import dumps

_log = logging.getLogger(__name__)

SUPPORTED_MODES = ["aead_xchacha20_poly1305_rtpsize"]
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Linux's value (include/uapi/asm-generic/socket.h); Python 3.11 does not export the name.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

# Voice gateway opcodes.
OP_IDENTIFY = 0
OP_SELECT_PROTOCOL = 1
OP_READY = 2
OP_HEARTBEAT = 3
OP_SESSION_DESCRIPTION = 4
OP_SPEAKING = 5
OP_HEARTBEAT_ACK = 6
OP_RESUME = 7
OP_HELLO = 8
OP_RESUMED = 9


@dataclass(frozen=True)
class RtpPacket:
    """One decrypted RTP packet as received by the fake voice UDP endpoint."""

    guild_id: int
    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes
    arrival_ns: int
    nonce: int
    marker: bool = False
    payload_type: int = 0x78


@dataclass(frozen=True)
class SpeakingEvent:
    guild_id: int
    ssrc: int
    speaking: int
    at_ns: int


@dataclass
class VoiceConnection:
    """One voice gateway session (one bot in one guild)."""

    guild_id: int
    user_id: int
    session_id: str
    token: str
    ssrc: int
    secret_key: bytes
    ws: web.WebSocketResponse | None = None
    mode: str | None = None
    client_address: tuple[str, int] | None = None  # from SELECT_PROTOCOL
    udp_address: tuple[str, int] | None = None  # seen on IP discovery
    session_described: bool = False
    closed: bool = False
    resumes: int = 0
    heartbeats: int = 0
    seq: int = 0
    speaking: list[SpeakingEvent] = field(default_factory=list)
    bad_packets: int = 0

    @property
    def ready(self) -> bool:
        """True once the client has a key and its UDP socket was discovered."""
        return self.session_described and self.udp_address is not None


#: (guild_id, user_id, session_id, token) -> valid?
TokenValidator = Callable[[int, int, str, str], bool]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        arrival = time.perf_counter_ns()
        try:
            self._server.handle_datagram(data, (str(addr[0]), int(addr[1])), arrival)
        except Exception:
            _log.exception("error handling voice datagram from %s", addr)


class VoiceServer:
    """Voice websocket handler and UDP endpoint; owned by :class:`FakeDiscord`."""

    def __init__(
        self,
        *,
        host: str,
        validate: TokenValidator,
        notify: Callable[[], None],
        heartbeat_interval_ms: float = 13750.0,
    ) -> None:
        self.host = host
        self._validate = validate
        self._notify = notify
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.udp_port = 0
        self._udp: _UdpProtocol | None = None
        self._next_ssrc = 1000
        self.connections: list[VoiceConnection] = []
        self._by_ssrc: dict[int, VoiceConnection] = {}
        self.packets: dict[int, list[RtpPacket]] = {}
        self.speaking: list[SpeakingEvent] = []
        self.ws_frames_received: list[dict[str, Any]] = []
        # Set by start_header_sink: record (sequence, arrival_ns) per guild, skip decryption.
        self.headers_only = False
        self.header_log: dict[int, list[tuple[int, int]]] = {}
        self._sink: _HeaderSink | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start_udp(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, 0)
        )
        self._udp = protocol
        # Load benchmarks send tens of thousands of packets a second: a bigger buffer (up to
        # net.core.rmem_max) rides out the moments this process is busy elsewhere.
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES
            )
        self.udp_port = int(transport.get_extra_info("sockname")[1])
        _log.debug("voice UDP listening on %s:%d", self.host, self.udp_port)

    async def close(self) -> None:
        for conn in list(self.connections):
            if conn.ws is not None and not conn.ws.closed:
                await conn.ws.close(code=1001)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        self._udp = None
        if self._sink is not None:
            self._sink.stop()
            self._sink = None

    # ------------------------------------------------------------------ queries
    def connections_for(self, guild_id: int) -> list[VoiceConnection]:
        return [c for c in self.connections if c.guild_id == guild_id]

    def active_connection(self, guild_id: int) -> VoiceConnection | None:
        for conn in reversed(self.connections):
            if conn.guild_id == guild_id and not conn.closed:
                return conn
        return None

    async def close_connection(self, guild_id: int, code: int) -> bool:
        """Close the guild's voice websocket with ``code`` (4015 makes discord.py resume)."""
        conn = self.active_connection(guild_id)
        if conn is None or conn.ws is None:
            return False
        self.wake_client(conn)
        ws = conn.ws
        conn.ws = None
        if code != 4015:
            conn.closed = True
        await ws.close(code=code)
        self._notify()
        return True

    # ------------------------------------------------------------------ websocket
    async def _send(
        self, conn: VoiceConnection | None, ws: web.WebSocketResponse, op: int, d: Any
    ) -> None:
        frame: dict[str, Any] = {"op": op, "d": d}
        if conn is not None:
            conn.seq += 1
            frame["seq"] = conn.seq
        await ws.send_str(dumps(frame))

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        _log.debug("voice websocket opened from %s (%s)", request.remote, request.query_string)
        conn: VoiceConnection | None = None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    _log.debug("ignoring binary voice frame (DAVE) of %d bytes", len(msg.data))
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.ws_frames_received.append(frame)
                op = frame.get("op")
                d = frame.get("d") or {}
                if op == OP_IDENTIFY:
                    conn = await self._on_identify(ws, d)
                    if conn is None:
                        break
                elif op == OP_RESUME:
                    conn = await self._on_resume(ws, d)
                    if conn is None:
                        break
                elif op == OP_HEARTBEAT:
                    if conn is not None:
                        conn.heartbeats += 1
                    t = d.get("t") if isinstance(d, dict) else d
                    await self._send(None, ws, OP_HEARTBEAT_ACK, {"t": t})
                elif conn is None:
                    _log.warning("voice op %s before IDENTIFY; closing 4003", op)
                    await ws.close(code=4003, message=b"Not authenticated")
                    break
                elif op == OP_SELECT_PROTOCOL:
                    await self._on_select_protocol(conn, ws, d)
                elif op == OP_SPEAKING:
                    event = SpeakingEvent(
                        guild_id=conn.guild_id,
                        ssrc=int(d.get("ssrc", conn.ssrc)),
                        speaking=int(d.get("speaking", 0)),
                        at_ns=time.perf_counter_ns(),
                    )
                    conn.speaking.append(event)
                    self.speaking.append(event)
                    self._notify()
                else:
                    _log.debug("ignoring voice op %s: %s", op, d)
        finally:
            if conn is not None:
                self.wake_client(conn)
            if conn is not None and conn.ws is ws:
                conn.ws = None
                conn.closed = True
                self._notify()
            _log.debug("voice websocket closed (code %s)", ws.close_code)
        return ws

    def wake_client(self, conn: VoiceConnection) -> None:
        """Send one small RTCP-like datagram to the client's UDP socket.

        discord.py's ``SocketReader`` thread blocks in ``select()`` (30 s timeout) on the
        UDP socket even while idle; when a reconnect closes that socket and opens a new
        one, the thread keeps waiting on the old one and misses the IP-discovery reply
        on the new one, so the reconnect times out. Real Discord keeps sending RTCP and
        other traffic that wakes the thread; this datagram does the same. discord.py
        ignores it (it is not an IP-discovery answer).
        """
        if conn.udp_address is None or self._udp is None or self._udp.transport is None:
            return
        packet = struct.pack(">BBHI", 0x80, 201, 1, conn.ssrc)  # RTCP receiver report
        self._udp.transport.sendto(packet, conn.udp_address)

    def wake_guild_clients(self, guild_id: int) -> None:
        for conn in self.connections_for(guild_id):
            self.wake_client(conn)

    async def _on_identify(
        self, ws: web.WebSocketResponse, d: dict[str, Any]
    ) -> VoiceConnection | None:
        try:
            guild_id = int(d["server_id"])
            user_id = int(d["user_id"])
            session_id = str(d["session_id"])
            token = str(d["token"])
        except (KeyError, TypeError, ValueError):
            await ws.close(code=4002, message=b"Failed to decode payload")
            return None
        if not self._validate(guild_id, user_id, session_id, token):
            _log.warning("voice IDENTIFY with unknown token/session for guild %s", guild_id)
            await ws.close(code=4004, message=b"Authentication failed")
            return None
        ssrc = self._next_ssrc
        self._next_ssrc += 1
        conn = VoiceConnection(
            guild_id=guild_id,
            user_id=user_id,
            session_id=session_id,
            token=token,
            ssrc=ssrc,
            secret_key=os.urandom(32),
            ws=ws,
        )
        for old in self.connections_for(guild_id):
            old.closed = True
        self.connections.append(conn)
        self._by_ssrc[ssrc] = conn
        await self._send(
            conn, ws, OP_HELLO, {"v": 8, "heartbeat_interval": self.heartbeat_interval_ms}
        )
        await self._send(
            conn,
            ws,
            OP_READY,
            {
                "ssrc": ssrc,
                "ip": self.host,
                "port": self.udp_port,
                "modes": list(SUPPORTED_MODES),
                "experiments": [],
            },
        )
        self._notify()
        return conn

    async def _on_resume(
        self, ws: web.WebSocketResponse, d: dict[str, Any]
    ) -> VoiceConnection | None:
        guild_id = int(d.get("server_id", 0))
        session_id = str(d.get("session_id"))
        token = str(d.get("token"))
        conn = next(
            (
                c
                for c in reversed(self.connections)
                if c.guild_id == guild_id and c.session_id == session_id
            ),
            None,
        )
        if conn is not None and not self._validate(guild_id, conn.user_id, session_id, token):
            conn = None
        if conn is None:
            _log.warning("voice RESUME for unknown session; closing 4006")
            await ws.close(code=4006, message=b"Session no longer valid")
            return None
        conn.ws = ws
        conn.token = token
        conn.closed = False
        conn.resumes += 1
        await self._send(
            conn, ws, OP_HELLO, {"v": 8, "heartbeat_interval": self.heartbeat_interval_ms}
        )
        await self._send(conn, ws, OP_RESUMED, None)
        if conn.session_described:
            # discord.py waits for a secret key on the new websocket even when resuming.
            await self._send_session_description(conn, ws)
        self._notify()
        return conn

    async def _send_session_description(
        self, conn: VoiceConnection, ws: web.WebSocketResponse
    ) -> None:
        await self._send(
            conn,
            ws,
            OP_SESSION_DESCRIPTION,
            {
                "mode": conn.mode,
                "secret_key": list(conn.secret_key),
                "dave_protocol_version": 0,
                "audio_codec": "opus",
                "video_codec": None,
                "media_session_id": conn.session_id,
            },
        )

    async def _on_select_protocol(
        self, conn: VoiceConnection, ws: web.WebSocketResponse, d: dict[str, Any]
    ) -> None:
        data = d.get("data") or {}
        mode = data.get("mode")
        if mode not in SUPPORTED_MODES:
            _log.warning("client selected unsupported voice mode %r", mode)
            await ws.close(code=4016, message=b"Unknown encryption mode")
            return
        conn.mode = mode
        conn.client_address = (str(data.get("address")), int(data.get("port", 0)))
        await self._send_session_description(conn, ws)
        conn.session_described = True
        self._notify()

    # ------------------------------------------------------------------ UDP
    def handle_datagram(self, data: bytes, addr: tuple[str, int], arrival_ns: int) -> None:
        if len(data) == 74 and data[0:2] == b"\x00\x01":
            self._answer_ip_discovery(data, addr)
            return
        if len(data) < 12 + 16 + 4 or (data[0] >> 6) != 2:
            _log.debug("ignoring %d-byte non-RTP datagram from %s", len(data), addr)
            return
        ssrc = struct.unpack_from(">I", data, 8)[0]
        conn = self._by_ssrc.get(ssrc)
        if conn is None or conn.mode is None:
            _log.debug("RTP for unknown ssrc %s", ssrc)
            return
        if self.headers_only:
            # A connection made before the benchmark's header sink started still sends here.
            self._log_header(data, arrival_ns)
            return
        packet = decrypt_rtpsize_packet(data, conn.secret_key)
        if packet is None:
            conn.bad_packets += 1
            _log.warning("could not decrypt RTP packet (ssrc %s)", ssrc)
            return
        header, payload, nonce = packet
        sequence, timestamp = struct.unpack_from(">HI", header, 2)
        rtp = RtpPacket(
            guild_id=conn.guild_id,
            ssrc=ssrc,
            sequence=sequence,
            timestamp=timestamp,
            payload=payload,
            arrival_ns=arrival_ns,
            nonce=nonce,
            marker=bool(header[1] & 0x80),
            payload_type=header[1] & 0x7F,
        )
        self.packets.setdefault(conn.guild_id, []).append(rtp)
        self._notify()

    def _answer_ip_discovery(self, data: bytes, addr: tuple[str, int]) -> None:
        ssrc, reply = ip_discovery_reply(data, addr)
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.sendto(reply, addr)
        self._discovered(ssrc, addr)

    def _discovered(self, ssrc: int, addr: tuple[str, int]) -> None:
        conn = self._by_ssrc.get(ssrc)
        if conn is not None:
            conn.udp_address = addr
        self._notify()

    # ------------------------------------------------------------------ load benchmarks
    def start_header_sink(self) -> None:
        """Load benchmarks: from now on voice UDP goes to a socket read by a thread that logs
        each RTP packet's (sequence, kernel arrival time) per guild in `header_log`, without
        decrypting. The kernel's receive timestamp (SO_TIMESTAMPNS) is when the packet reached
        this socket, however busy the benchmark's own event loop is."""
        self.headers_only = True
        self._sink = _HeaderSink(self, asyncio.get_running_loop())
        self._sink.start()
        self.udp_port = self._sink.port

    def _log_header(self, data: bytes, arrival_ns: int) -> None:
        ssrc = struct.unpack_from(">I", data, 8)[0]
        conn = self._by_ssrc.get(ssrc)
        if conn is not None and conn.mode is not None:
            sequence = struct.unpack_from(">H", data, 2)[0]
            self.header_log.setdefault(conn.guild_id, []).append((sequence, arrival_ns))


def ip_discovery_reply(data: bytes, addr: tuple[str, int]) -> tuple[int, bytes]:
    """The SSRC asking and Discord's 74-byte answer: the address the request came from."""
    ssrc = struct.unpack_from(">I", data, 4)[0]
    reply = bytearray(74)
    struct.pack_into(">HHI", reply, 0, 2, 70, ssrc)
    ip = addr[0].encode("ascii")[:63]
    reply[8 : 8 + len(ip)] = ip
    struct.pack_into(">H", reply, 72, addr[1])
    return ssrc, bytes(reply)


class _HeaderSink(threading.Thread):
    """The benchmark's UDP endpoint (see VoiceServer.start_header_sink)."""

    def __init__(self, server: VoiceServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="fake-voice-header-sink", daemon=True)
        self._server = server
        self._loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((server.host, 0))
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.stopped = threading.Event()

    def run(self) -> None:
        cmsg_space = socket.CMSG_SPACE(16)
        while not self.stopped.is_set():
            try:
                data, ancillary, _, addr = self.sock.recvmsg(2048, cmsg_space)
            except TimeoutError:
                continue
            except OSError:
                return
            arrival_ns = time.time_ns()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:  # SCM_ == SO_
                    seconds, nanos = struct.unpack("qq", value[:16])
                    arrival_ns = seconds * 1_000_000_000 + nanos
            if len(data) == 74 and data[0:2] == b"\x00\x01":
                peer = (str(addr[0]), int(addr[1]))
                ssrc, reply = ip_discovery_reply(data, peer)
                self.sock.sendto(reply, peer)
                self._loop.call_soon_threadsafe(self._server._discovered, ssrc, peer)
            elif len(data) >= 12 + 16 + 4 and (data[0] >> 6) == 2:
                self._server._log_header(data, arrival_ns)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=2)
        self.sock.close()


def rtp_header_length(packet: bytes) -> tuple[int, int]:
    """(unencrypted header length, encrypted extension body length) for rtpsize modes.

    In the ``*_rtpsize`` modes the fixed header, the CSRCs and the 4-byte extension
    header (profile + length) are additional data; the extension body is encrypted.
    """
    csrc_count = packet[0] & 0x0F
    length = 12 + 4 * csrc_count
    ext_body = 0
    if packet[0] & 0x10:
        ext_words = struct.unpack_from(">H", packet, length + 2)[0]
        length += 4
        ext_body = 4 * ext_words
    return length, ext_body


def decrypt_rtpsize_packet(packet: bytes, key: bytes) -> tuple[bytes, bytes, int] | None:
    """Decrypt an ``aead_xchacha20_poly1305_rtpsize`` packet: (header, opus, nonce counter)."""
    header_len, ext_body = rtp_header_length(packet)
    header = packet[:header_len]
    ciphertext = packet[header_len:-4]
    nonce_bytes = packet[-4:]
    nonce = nonce_bytes + b"\x00" * 20
    try:
        plain = nacl.secret.Aead(key).decrypt(ciphertext, aad=header, nonce=nonce)
    except nacl.exceptions.CryptoError:
        return None
    return header, plain[ext_body:], struct.unpack(">I", nonce_bytes)[0]
