"""Entrance sounds played on VOICE_STATE_UPDATE, and the bot leaving an empty channel."""

from __future__ import annotations

import asyncio

from tests.bot.harness import BotEnv
from tests.fakediscord import audio_frames, decode_opus_to_pcm, dominant_frequency

SHORT = 0.3
QUIET = 0.5  # how long "nothing happens" is watched for


async def _balance(env: BotEnv, discord_id: int) -> int:
    return (await env.services.users.get_by_discord_id(discord_id)).credits


async def _rejoin(env: BotEnv, member_id: int, channel_id: int | None = None) -> None:
    """Leave voice, wait until the bot has dealt with it, then join (again)."""
    await env.fake.set_user_voice(env.guild.id, member_id, None)
    if env.fake.bot_voice_channel(env.guild.id) is not None and not any(
        uid != env.fake.bot_user.id for uid in env.fake.guilds[env.guild.id].voice_states
    ):
        await env.fake.wait_for_bot_voice(env.guild.id, None)
    await env.fake.set_user_voice(env.guild.id, member_id, channel_id or env.guild.voice_channel.id)


async def _heard(env: BotEnv, start: int) -> int:
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    return round(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) / 100)


async def _nothing_played(env: BotEnv, start: int) -> bool:
    await asyncio.sleep(QUIET)
    return audio_frames(env.fake.audio_packets(env.guild.id)[start:]) == []


async def test_entrance_plays_when_joining_and_is_charged(env: BotEnv) -> None:
    sound = await env.add_tone("en hello", 900, seconds=SHORT)
    text = await env.reply_text(env.alice, "entrance set", {"sound": str(sound.id)})
    assert text == (
        "Your entrance sound is now **en hello**; it plays when you join a voice channel here."
    )
    before = await _balance(env, env.alice.id)
    start = len(env.fake.audio_packets(env.guild.id))
    await _rejoin(env, env.alice.id)
    assert await _heard(env, start) == 9
    assert await _balance(env, env.alice.id) == before - 1
    user = await env.services.users.get_by_discord_id(env.alice.id)
    last = (await env.services.credits.history(user.id or 0, limit=1)).items[0]
    assert (last.action, last.meta["source"], last.meta["sound"]) == (
        "play",
        "entrance",
        "en hello",
    )

    # Mute/deafen changes are not joins.
    start = len(env.fake.audio_packets(env.guild.id))
    await env.fake.set_user_voice(
        env.guild.id, env.alice.id, env.guild.voice_channel.id, self_mute=True
    )
    assert await _nothing_played(env, start)

    assert await env.reply_text(env.alice, "entrance clear") == "Your entrance sound is cleared."
    assert await env.reply_text(env.alice, "entrance clear") == "You have no entrance sound here."
    start = len(env.fake.audio_packets(env.guild.id))
    await _rejoin(env, env.alice.id)
    assert await _nothing_played(env, start)
    assert await _balance(env, env.alice.id) == before - 1


async def test_turned_off_by_the_guild_nothing_plays(env: BotEnv) -> None:
    sound = await env.add_tone("en off", 1000, seconds=SHORT)
    await env.reply_text(env.alice, "entrance set", {"sound": sound.name})
    await env.services.guilds.update(env.guild.id, entrance_sounds_enabled=False)
    try:
        before = await _balance(env, env.alice.id)
        start = len(env.fake.audio_packets(env.guild.id))
        await _rejoin(env, env.alice.id)
        assert await _nothing_played(env, start)
        assert await _balance(env, env.alice.id) == before
        text = await env.reply_text(env.alice, "entrance set", {"sound": sound.name})
        assert text.endswith("Entrance sounds are turned off in this server at the moment.")
    finally:
        await env.services.guilds.update(env.guild.id, entrance_sounds_enabled=True)
    # Voice events are handled in order: once this join's entrance is heard, the one above
    # was handled too, and it cost nothing.
    start = len(env.fake.audio_packets(env.guild.id))
    await _rejoin(env, env.alice.id)
    assert await _heard(env, start) == 10
    assert await _balance(env, env.alice.id) == before - 1
    await env.reply_text(env.alice, "entrance clear")


async def test_cooldown_applies_to_entrances(env: BotEnv) -> None:
    sound = await env.add_tone("en again", 1500, seconds=SHORT)
    await env.reply_text(env.bob, "entrance set", {"sound": str(sound.id)})
    await env.services.guilds.update(env.guild.id, cooldown_seconds=60)
    try:
        before = await _balance(env, env.bob.id)
        start = len(env.fake.audio_packets(env.guild.id))
        await _rejoin(env, env.bob.id)
        assert await _heard(env, start) == 15
        start = len(env.fake.audio_packets(env.guild.id))
        await _rejoin(env, env.bob.id)
        assert await _nothing_played(env, start)
        assert await _balance(env, env.bob.id) == before - 1  # the refused one cost nothing
    finally:
        await env.services.guilds.update(env.guild.id, cooldown_seconds=None)
    await env.reply_text(env.bob, "entrance clear")


async def test_entrance_refused_while_busy_elsewhere(env: BotEnv) -> None:
    long = await env.add_tone("en long", 500, seconds=1.2)
    hello = await env.add_tone("en other", 1100, seconds=SHORT)
    other = await env.fake.add_channel(env.guild.id, "Other voice", voice=True)
    await env.reply_text(env.bob, "entrance set", {"sound": str(hello.id)})
    await env.fake.set_user_voice(env.guild.id, env.bob.id, None)
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    await env.reply_text(env.alice, "play", {"sound": str(long.id)})
    before = await _balance(env, env.bob.id)
    await env.fake.set_user_voice(env.guild.id, env.bob.id, other.id)
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert round(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) / 100) == 5
    assert await _nothing_played(env, start + len(packets))
    assert await _balance(env, env.bob.id) == before
    assert env.fake.bot_voice_channel(env.guild.id) == env.guild.voice_channel.id
    await env.fake.set_user_voice(env.guild.id, env.bob.id, None)
    await env.reply_text(env.bob, "entrance clear")


async def test_bot_leaves_when_its_channel_empties(env: BotEnv) -> None:
    sound = await env.add_tone("en stay", 1200, seconds=SHORT)
    channel = env.guild.voice_channel.id
    await env.join_voice(env.alice)
    await env.join_voice(env.bob)
    start = len(env.fake.audio_packets(env.guild.id))
    await env.reply_text(env.alice, "play", {"sound": str(sound.id)})
    await env.fake.wait_for_bot_voice(env.guild.id, channel)
    await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)

    await env.fake.set_user_voice(env.guild.id, env.bob.id, None)  # alice is still listening
    await asyncio.sleep(QUIET)
    assert env.fake.bot_voice_channel(env.guild.id) == channel

    await env.fake.set_user_voice(env.guild.id, env.alice.id, None)  # nobody left
    await env.fake.wait_for_bot_voice(env.guild.id, None)
    for _ in range(100):  # and the voice client is gone, so the next join connects afresh
        if env.bot.get_guild(env.guild.id).voice_client is None:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.05)
    assert env.bot.get_guild(env.guild.id).voice_client is None  # type: ignore[union-attr]
