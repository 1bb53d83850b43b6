"""/play and friends end to end: the real bot, the fake Discord, the audio checked."""

from __future__ import annotations

import itertools

from bot.voice.client import PollSocketReader, SoundVoiceClient
from tests.bot.harness import TONE_SECONDS, BotEnv, answer_text
from tests.fakediscord import audio_frames, decode_opus_to_pcm, dominant_frequency, split_playbacks


async def test_play_streams_the_sound(env: BotEnv) -> None:
    sound = await env.add_tone("beep", 440)
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    inter = await env.slash(env.alice, "play", {"sound": str(sound.id)})
    text = await answer_text(inter)
    assert text.startswith("Playing **beep**") and "credits left" in text
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    frames = audio_frames(packets)
    expected = TONE_SECONDS / 0.020
    assert abs(len(frames) - expected) <= 0.1 * expected + 2
    for prev, cur in itertools.pairwise(packets):
        assert cur.sequence == (prev.sequence + 1) % 65536
        assert cur.timestamp == (prev.timestamp + 960) % 2**32
    span_ms = (packets[-1].arrival_ns - packets[0].arrival_ns) / 1e6
    assert span_ms > 0.8 * 20 * (len(packets) - 1)  # paced in real time, not a burst
    pcm = decode_opus_to_pcm(frames)
    assert abs(dominant_frequency(pcm) - 440) <= 5
    # The connection reads UDP with our poll()-based reader, not discord.py's select() one.
    guild = env.bot.get_guild(env.guild.id)
    assert guild is not None and isinstance(guild.voice_client, SoundVoiceClient)
    reader = guild.voice_client._connection._socket_reader
    assert isinstance(reader, PollSocketReader) and reader.is_alive()
    # Charged once, recorded once.
    user = await env.services.users.get_by_discord_id(env.alice.id)
    history = await env.services.credits.history(user.id or 0)
    assert [t.action for t in history.items][:2] == ["play", "signup"]
    refreshed = await env.services.sounds.get(sound.id or 0)
    assert refreshed.play_count == 1


async def test_play_by_name_and_queue_order(env: BotEnv) -> None:
    low = await env.add_tone("low", 300)
    mid = await env.add_tone("mid", 600)
    high = await env.add_tone("high", 1200)
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    texts = [await env.reply_text(env.alice, "play", {"sound": s}) for s in ("low", "mid", "high")]
    assert texts[0].startswith("Playing **low**")
    assert "position 1" in texts[1] and "position 2" in texts[2]
    queue = await env.reply_text(env.alice, "queue")
    assert "▶ **low**" in queue and "1. mid" in queue and "2. high" in queue
    heard = []
    for _ in (low, mid, high):
        packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
        start += len(packets)
        heard.append(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))))
    assert [round(f / 100) for f in heard] == [3, 6, 12], heard


async def test_stop_mid_sound_clears_queue_and_refunds(env: BotEnv) -> None:
    long = await env.add_tone("long", 500, seconds=4)
    queued = await env.add_tone("queued", 700)
    await env.join_voice(env.bob)
    user = await env.services.users.ensure_discord_user(env.bob.id, "bob")
    before = (await env.services.users.get(user.id or 0)).credits
    start = len(env.fake.audio_packets(env.guild.id))
    await env.reply_text(env.bob, "play", {"sound": str(long.id)})
    await env.reply_text(env.bob, "play", {"sound": str(queued.id)})
    await env.fake.wait_for_audio(env.guild.id, min_packets=20, start=start)
    assert (await env.reply_text(env.bob, "stop")).startswith("Stopped and cleared 1 queued")
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert len(audio_frames(packets)) < 4 / 0.020 * 0.6  # cut short
    assert len(split_playbacks(packets)) == 1  # the queued sound never played
    after = (await env.services.users.get(user.id or 0)).credits
    assert after == before - 1  # the long one charged, the queued one refunded
    assert await env.services.credits.verify() == []


async def test_not_in_voice_and_unknown_sound_change_nothing(env: BotEnv) -> None:
    sound = await env.add_tone("quiet", 350)
    await env.fake.set_user_voice(env.guild.id, env.bob.id, None)
    text = await env.reply_text(env.bob, "play", {"sound": str(sound.id)})
    assert text == "Join a voice channel first, then try again."
    text = await env.reply_text(env.bob, "play", {"sound": "no such sound"})
    assert text == "No sound called 'no such sound' here."
    other = await env.add_tone("elsewhere", 360, guild_id=999_999)
    await env.join_voice(env.bob)
    text = await env.reply_text(env.bob, "play", {"sound": str(other.id)})
    assert text == f"No sound called '{other.id}' here."
    assert (await env.services.sounds.get(sound.id or 0)).play_count == 0


async def test_autocomplete_lists_matching_sounds(env: BotEnv) -> None:
    await env.add_tone("airhorn", 410)
    await env.add_tone("air raid", 420)
    choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.alice.id,
        "play",
        {"sound": "air"},
        focused="sound",
    )
    names = [c["name"] for c in choices]
    assert names[:2] == ["air raid", "airhorn"] and len(names) <= 25
    assert all(c["value"].isdigit() for c in choices)
