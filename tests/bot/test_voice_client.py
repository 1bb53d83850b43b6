"""The voice UDP reader past 1,024 open files (discord.py's own one spins there)."""

from __future__ import annotations

import os
import queue
import resource
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import discord
import pytest

from bot.voice.client import PollSocketReader, SoundVoiceClient, sodium_ffi
from soundboard_cli.main import raise_open_file_limit

HIGH_FD = 1500  # above select()'s FD_SETSIZE of 1024


def udp_socket_at(fd: int) -> socket.socket:
    """A bound UDP socket whose descriptor number is `fd`."""
    low = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    low.bind(("127.0.0.1", 0))
    os.dup2(low.fileno(), fd)
    low.close()
    return socket.socket(fileno=fd)


def idle_cpu_seconds(seconds: float) -> float:
    """Process CPU time spent over `seconds` of the test doing nothing."""
    start = time.process_time()
    time.sleep(seconds)
    return time.process_time() - start


@pytest.fixture
def high_fd_room() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.skip(f"the hard open-files limit ({hard}) is below {HIGH_FD}")
    if soft != resource.RLIM_INFINITY and soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 100, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def started_reader(state: Any) -> tuple[PollSocketReader, queue.Queue[bytes]]:
    received: queue.Queue[bytes] = queue.Queue()
    reader = PollSocketReader(state, start_paused=False)
    reader.register(received.put)
    reader.start()
    return reader, received


@pytest.mark.usefixtures("high_fd_room")
def test_reader_delivers_datagrams_on_a_descriptor_above_1024() -> None:
    sock = udp_socket_at(HIGH_FD)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    state = SimpleNamespace(socket=sock)
    reader, received = started_reader(state)
    try:
        sender.sendto(b"ip discovery reply", sock.getsockname())
        assert received.get(timeout=2) == b"ip discovery reply"
        # Waiting for the next datagram costs nothing (discord.py's select() loop spun a core).
        assert idle_cpu_seconds(0.4) < 0.15
    finally:
        reader.stop()
        sender.sendto(b"wake", sock.getsockname())  # poll() returns, the loop sees the stop
        reader.join(timeout=2)
        sock.close()
        sender.close()
    assert not reader.is_alive()


def test_reader_follows_a_replaced_socket_and_waits_without_one() -> None:
    """A voice reconnect closes the socket and makes a new one; the reader neither spins on the
    missing socket nor keeps reading the old one."""
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    state = SimpleNamespace(socket=first)
    reader, received = started_reader(state)
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.1", 0))
    try:
        sender.sendto(b"one", first.getsockname())
        assert received.get(timeout=2) == b"one"
        state.socket = cast(Any, None)  # discord.py between close and the next connect
        sender.sendto(b"wake", first.getsockname())
        assert received.get(timeout=2) == b"wake"
        first.close()
        assert idle_cpu_seconds(0.4) < 0.15
        state.socket = second
        sender.sendto(b"two", second.getsockname())
        assert received.get(timeout=2) == b"two"
    finally:
        reader.stop()
        sender.sendto(b"wake", second.getsockname())
        reader.join(timeout=2)
        second.close()
        sender.close()
    assert not reader.is_alive()


def test_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard open-files limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        raise_open_file_limit()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised > 256
        assert hard == resource.RLIM_INFINITY or raised <= hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def client_with_state(
    cls: type[discord.VoiceClient], sent: list[bytes], key: list[int], timestamp: int
) -> Any:
    """A voice client of `cls` wired to a minimal connection state (no Discord needed)."""
    client = cls.__new__(cls)
    client.sequence, client.timestamp, client._incr_nonce = 65530, timestamp, 2**32 - 3
    client._connection = cast(
        Any,
        SimpleNamespace(
            mode="aead_xchacha20_poly1305_rtpsize",
            secret_key=key,
            ssrc=4242,
            dave_session=None,
            can_encrypt=False,
            send_packet=sent.append,
        ),
    )
    if cls is SoundVoiceClient:  # what SoundVoiceClient.__init__ adds
        client._key_source, client._key = None, b""
        client._sealed = sodium_ffi.new("unsigned char[]", 4096)
        client._sealed_len = sodium_ffi.new("unsigned long long *")
    return client


def test_fast_packets_are_byte_identical_to_discord_pys() -> None:
    """Same RTP header, nonce counter and ciphertext as discord.py's own send, across the
    sequence and nonce wrap-around and a key change (a reconnect)."""
    key = list(os.urandom(32))
    stock_sent: list[bytes] = []
    fast_sent: list[bytes] = []
    stock = client_with_state(discord.VoiceClient, stock_sent, key, 123_456)
    fast = client_with_state(SoundVoiceClient, fast_sent, key, 123_456)
    payloads = [os.urandom(n) for n in (3, 60, 120, 400, 1275)] * 2
    for index, payload in enumerate(payloads):
        if index == 6:
            new_key = list(os.urandom(32))
            stock._connection.secret_key = new_key
            fast._connection.secret_key = new_key
        stock.send_audio_packet(payload, encode=False)
        fast.send_audio_packet(payload, encode=False)
    assert len(fast_sent) == len(payloads)
    assert fast_sent == stock_sent
    assert b"\x00\x00" in {p[2:4] for p in fast_sent}  # the sequence wrapped
    assert (fast.sequence, fast.timestamp, fast._incr_nonce) == (
        stock.sequence,
        stock.timestamp,
        stock._incr_nonce,
    )


def test_fast_timestamp_wraps_modulo_2_to_the_32() -> None:
    sent: list[bytes] = []
    fast = client_with_state(SoundVoiceClient, sent, list(os.urandom(32)), 2**32 - 500)
    fast.send_audio_packet(b"\xf8\xff\xfe", encode=False)
    fast.send_audio_packet(b"\xf8\xff\xfe", encode=False)
    stamps = [int.from_bytes(p[4:8], "big") for p in sent]
    assert stamps == [2**32 - 500, 460]
