"""discord.py's VoiceClient with a UDP reader that keeps working past 1,024 open files.

discord.py 2.7 reads each voice connection's UDP socket in a thread that waits with
`select.select`. `select` cannot watch a file descriptor numbered 1,024 or above: it raises, the
reader logs at debug level and tries again at once, forever. A bot in a few hundred voice
channels holds more than 1,024 descriptors (a TLS websocket and a UDP socket per channel), so
every connection opened after that point spins a thread that holds the GIL, IP discovery never
finishes, and the whole process starves (measured: at about 480 voice connections the event
loop fell 10+ seconds behind). The reader here waits with `poll`, which has no such limit.

Sending is the hot path (50 packets a second per guild): discord.py builds a new PyNaCl `Aead`
and converts the key for every packet (about 18 us); the same packet built with one libsodium
call into a reused buffer costs about 5 us.
"""

from __future__ import annotations

import logging
import select
import struct
from typing import Any

import discord
from discord.voice_state import SocketReader, VoiceConnectionState

try:  # PyNaCl's bundled libsodium; without it discord.py's own (slower) path is used
    from nacl._sodium import ffi as sodium_ffi
    from nacl._sodium import lib as sodium_lib
except ImportError:  # pragma: no cover - PyNaCl always ships it
    sodium_ffi = sodium_lib = None

log = logging.getLogger(__name__)

FAST_MODE = "aead_xchacha20_poly1305_rtpsize"
RTP_HEADER = struct.Struct(">BBHII")
RTP_VERSION, RTP_OPUS_TYPE = 0x80, 0x78
NONCE_COUNTER = struct.Struct(">I")
NONCE_PADDING = bytes(20)  # the 24-byte XChaCha nonce is the 4-byte counter, then zeros
SAMPLES_PER_FRAME = 960
# Opus packets are at most 1,275 bytes and DAVE adds a few dozen; the buffer has room to spare.
MAX_FAST_OPUS = 2000
SEALED_BUFFER_BYTES = 4096

POLL_TIMEOUT_MS = 30_000
# A closed or missing socket is a short, normal state during reconnects; wait instead of spinning.
NO_SOCKET_WAIT_SECONDS = 0.05


class PollSocketReader(SocketReader):
    """discord.py's SocketReader (same pause/resume/callbacks) waiting with `poll`."""

    def _do_run(self) -> None:
        poller: select.poll | None = None
        watched: Any = None
        while not self._end.is_set():
            if not self._running.is_set():
                self._running.wait()
                continue
            sock = self.state.socket
            try:
                fd = sock.fileno()
            except (AttributeError, OSError):  # not created yet (discord.py's MISSING)
                fd = -1
            if fd < 0:
                self._end.wait(NO_SOCKET_WAIT_SECONDS)
                continue
            if poller is None or sock is not watched:
                # Reconnects replace the socket; a poller holds the old descriptor number.
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                watched = sock
            events = poller.poll(POLL_TIMEOUT_MS)
            if not events:
                continue
            if events[0][1] & (select.POLLNVAL | select.POLLERR | select.POLLHUP):
                # Closed under us: forget it and look again once the state has a new socket.
                poller = None
                self._end.wait(NO_SOCKET_WAIT_SECONDS)
                continue
            try:
                data = sock.recv(2048)
            except OSError:
                log.debug("voice socket read failed", exc_info=True)
                continue
            for callback in self._callbacks:
                try:
                    callback(data)
                except Exception:
                    log.exception("voice socket callback %r failed", callback)


class _PollingConnectionState(VoiceConnectionState):
    # VoiceConnectionState.__init__ builds its SocketReader and starts it in the next statement.
    # This property swaps the reader in that assignment, before the thread starts, so the stock
    # reader is never started and nothing of discord.py's __init__ is copied here.
    @property
    def _socket_reader(self) -> SocketReader:
        return self._poll_reader

    @_socket_reader.setter
    def _socket_reader(self, reader: SocketReader) -> None:
        self._poll_reader = (
            reader if isinstance(reader, PollSocketReader) else PollSocketReader(reader.state)
        )


class SoundVoiceClient(discord.VoiceClient):
    """The VoiceClient every player connects with (`channel.connect(cls=SoundVoiceClient)`)."""

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        super().__init__(client, channel)
        self._key_source: object = None
        self._key = b""
        if sodium_ffi is not None:
            self._sealed = sodium_ffi.new("unsigned char[]", SEALED_BUFFER_BYTES)
            self._sealed_len = sodium_ffi.new("unsigned long long *")

    def create_connection_state(self) -> VoiceConnectionState:
        return _PollingConnectionState(self)

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        """discord.py's packet (RTP header, DAVE when active, transport encryption), built
        cheaply for ready Opus in the mode Discord uses; anything else goes to discord.py."""
        state = self._connection
        if encode or state.mode != FAST_MODE or sodium_lib is None or len(data) > MAX_FAST_OPUS:
            super().send_audio_packet(data, encode=encode)
            return
        if state.dave_session is not None and state.can_encrypt:
            data = state.dave_session.encrypt_opus(data)
        self.sequence = (self.sequence + 1) & 0xFFFF
        header = RTP_HEADER.pack(
            RTP_VERSION, RTP_OPUS_TYPE, self.sequence, self.timestamp, state.ssrc
        )
        key = state.secret_key
        if key is not self._key_source:  # a new session description after a reconnect
            self._key, self._key_source = bytes(key), key
        counter = NONCE_COUNTER.pack(self._incr_nonce)
        self._incr_nonce = (self._incr_nonce + 1) & 0xFFFFFFFF
        sodium_lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            self._sealed,
            self._sealed_len,
            data,
            len(data),
            header,
            len(header),
            sodium_ffi.NULL,
            counter + NONCE_PADDING,
            self._key,
        )
        packet = header + sodium_ffi.buffer(self._sealed, self._sealed_len[0])[:] + counter
        try:
            state.send_packet(packet)
        except OSError:
            log.debug("voice packet dropped seq=%s", self.sequence)
        self.timestamp = (self.timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
