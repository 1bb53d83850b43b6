"""POST /api/v1/sounds/{id}/play end to end: the web app and the real bot on the same services
(on PostgreSQL the request and the answer travel through LISTEN/NOTIFY), the fake Discord, the
audio checked at the fake voice server and the charge in the ledger."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from core.models import Sound, User
from core.services.container import Services
from core.services.remote_play import CLAIM_TIMEOUT_SECONDS
from tests.bot.harness import TONE_SECONDS, BotEnv
from tests.core import audiogen
from tests.fakediscord import FakeMember, audio_frames, decode_opus_to_pcm, dominant_frequency
from web.app import create_app

# aiohttp-session stores its state under string keys (tests/web/conftest.py says the same).
pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning:aiohttp_session"
)

SESSION_SECRET = "test-session-secret-that-is-long-enough"
_names = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def api(env: BotEnv) -> AsyncIterator[TestClient[Any, Any]]:
    """The web app built on the bot's own services, served on the same loop."""
    settings = env.services.settings.model_copy(update={"session_secret": SESSION_SECRET})
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, env.services), host="127.0.0.1")
    )
    await client.start_server()
    yield client
    await client.close()


@dataclass
class Player:
    member: FakeMember
    user: User
    headers: dict[str, str]


async def new_player(env: BotEnv) -> Player:
    """A fresh member of the test guild, with an account (their Discord id) and an API token."""
    member = await env.fake.add_member(env.guild.id, name=f"remote{next(_names)}")
    user = await env.services.users.ensure_discord_user(member.id, member.user.username)
    token = await env.services.accounts.create_token(user.id or 0, "stream deck")
    return Player(member, user, {"Authorization": f"Bearer {token.plaintext}"})


async def add_global_tone(env: BotEnv, name: str, freq: int) -> Sound:
    """A sound of the global library (BotEnv.add_tone adds to the test guild)."""
    path = await asyncio.to_thread(
        audiogen.render,
        env.tmp / f"{name}-{freq}.wav",
        f"sine=frequency={freq}:sample_rate=48000",
        seconds=TONE_SECONDS,
        rate=48000,
    )
    return (await env.services.sounds.add_file(path, name=name, guild_id=None)).sound


async def play(api: TestClient[Any, Any], player: Player, sound: Sound) -> Any:
    return await api.post(f"/api/v1/sounds/{sound.id}/play", headers=player.headers)


async def credits_of(env: BotEnv, user: User) -> int:
    return (await env.services.users.get(user.id or 0)).credits


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code, body
    return dict(body["error"])


async def test_play_from_the_api_streams_and_charges(
    env: BotEnv, api: TestClient[Any, Any]
) -> None:
    sound = await env.add_tone("remote beep", 660)
    player = await new_player(env)
    await env.join_voice(player.member)
    before = await credits_of(env, player.user)
    start = len(env.fake.audio_packets(env.guild.id))
    response = await play(api, player, sound)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "played" and body["position"] == 0
    assert body["guild"] == str(env.guild.id)
    assert body["sound"] == {"id": sound.id, "name": "remote beep"}
    assert body["balance_after"] == before - 1
    assert "remote beep" in body["message"]

    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    pcm = decode_opus_to_pcm(audio_frames(packets))
    assert abs(dominant_frequency(pcm) - 660) <= 5

    assert await credits_of(env, player.user) == before - 1
    history = await env.services.credits.history(player.user.id or 0)
    charge = history.items[0]
    assert (charge.action, charge.amount) == ("play", -1)
    assert charge.meta["source"] == "api" and charge.meta["sound_id"] == sound.id
    assert (await env.services.sounds.get(sound.id or 0)).play_count == 1
    assert env.services.remote_play.pending == 0


async def test_a_global_sound_plays_where_the_member_is(
    env: BotEnv, api: TestClient[Any, Any]
) -> None:
    sound = await add_global_tone(env, "remote global", 880)
    assert sound.guild_id is None
    player = await new_player(env)
    await env.join_voice(player.member)
    start = len(env.fake.audio_packets(env.guild.id))
    response = await play(api, player, sound)
    assert response.status == 200, await response.text()
    assert (await response.json())["guild"] == str(env.guild.id)
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 880) <= 5


async def test_not_in_voice_is_answered_at_once(env: BotEnv, api: TestClient[Any, Any]) -> None:
    sound = await env.add_tone("remote quiet", 720)
    player = await new_player(env)
    before = await credits_of(env, player.user)
    started = time.monotonic()
    response = await play(api, player, sound)
    elapsed = time.monotonic() - started
    body = await error_of(response, 409, "not_in_voice")
    assert "Join a voice channel in Soundboard Test" in body["message"]
    # This process owns the guild, so it says so straight away (no waiting for a timeout).
    assert elapsed < CLAIM_TIMEOUT_SECONDS / 2, elapsed
    # Left the channel again: same answer.
    await env.join_voice(player.member)
    await env.fake.set_user_voice(env.guild.id, player.member.id, None)
    await error_of(await play(api, player, sound), 409, "not_in_voice")
    assert await credits_of(env, player.user) == before
    assert (await env.services.sounds.get(sound.id or 0)).play_count == 0


async def test_out_of_credits_is_402(env: BotEnv, api: TestClient[Any, Any]) -> None:
    sound = await env.add_tone("remote pricey", 740)
    player = await new_player(env)
    await env.services.credits.take(
        player.user.id or 0, await credits_of(env, player.user), reason="test: spent it all"
    )
    await env.join_voice(player.member)
    start = len(env.fake.audio_packets(env.guild.id))
    body = await error_of(await play(api, player, sound), 402, "insufficient_credits")
    assert body["balance"] == 0 and "Not enough credits" in body["message"]
    assert await credits_of(env, player.user) == 0
    assert len(env.fake.audio_packets(env.guild.id)) == start
    assert await env.services.credits.verify() == []


async def test_nobody_claims_what_no_bot_can_play(env: BotEnv, api: TestClient[Any, Any]) -> None:
    """A sound of a guild this bot is not in (another shard's), and a global sound for a member
    in no voice channel: no process answers, so the request times out with a 409."""
    foreign = await env.add_tone("remote foreign", 760, guild_id=987_654_321)
    global_sound = await add_global_tone(env, "remote global quiet", 780)
    player = await new_player(env)
    remote = env.services.remote_play
    old = remote.claim_timeout
    remote.claim_timeout = 0.5
    try:
        for sound in (foreign, global_sound):
            started = time.monotonic()
            body = await error_of(await play(api, player, sound), 409, "conflict")
            assert 0.45 < time.monotonic() - started < 3
            assert "not in a voice channel the bot can see" in body["message"]
    finally:
        remote.claim_timeout = old
    assert remote.pending == 0
    history = await env.services.credits.history(player.user.id or 0)
    assert [t.action for t in history.items] == ["signup"]


async def test_web_and_bot_as_separate_processes(env: BotEnv) -> None:
    """The web app on services of its own (its own pool and event bus connection), sharing only
    the database with the bot, as a separate `soundboard web` process would."""
    if env.services.db.is_sqlite:
        pytest.skip("on SQLite the event bus is in-process: one process runs bot and web")
    settings = env.services.settings.model_copy(update={"session_secret": SESSION_SECRET})
    sound = await env.add_tone("remote apart", 980)
    player = await new_player(env)
    async with Services.from_settings(settings) as web_services:
        assert web_services.events is not env.services.events
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_app(settings, web_services), host="127.0.0.1")
        )
        await client.start_server()
        try:
            started = time.monotonic()
            await error_of(await play(client, player, sound), 409, "not_in_voice")
            assert time.monotonic() - started < CLAIM_TIMEOUT_SECONDS / 2
            await env.join_voice(player.member)
            start = len(env.fake.audio_packets(env.guild.id))
            response = await play(client, player, sound)
            assert response.status == 200, await response.text()
            body = await response.json()
            assert body["status"] in ("played", "queued") and body["guild"] == str(env.guild.id)
            packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
            pcm = decode_opus_to_pcm(audio_frames(packets))
            assert abs(dominant_frequency(pcm) - 980) <= 5
        finally:
            await client.close()
    history = await env.services.credits.history(player.user.id or 0)
    assert [(t.action, t.meta.get("source")) for t in history.items][:1] == [("play", "api")]
