"""/playlist end to end: editing a member's playlists, and playing one in order, charged."""

from __future__ import annotations

from core.models import Sound
from tests.bot.harness import BotEnv
from tests.fakediscord import audio_frames, decode_opus_to_pcm, dominant_frequency

SHORT = 0.3


async def _balance(env: BotEnv, discord_id: int) -> int:
    return (await env.services.users.get_by_discord_id(discord_id)).credits


async def _heard(env: BotEnv, start: int, count: int) -> list[int]:
    """The dominant frequency of each of the next `count` playbacks, in hundreds of Hz."""
    heard = []
    for _ in range(count):
        packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
        start += len(packets)
        heard.append(round(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) / 100))
    return heard


async def _playlist(env: BotEnv, name: str, sounds: list[Sound]) -> None:
    created = await env.reply_text(env.alice, "playlist create", {"name": name})
    assert created.startswith(f"Created **{name}**")
    for n, sound in enumerate(sounds, start=1):
        text = await env.reply_text(
            env.alice, "playlist add", {"playlist": name, "sound": str(sound.id)}
        )
        assert text == f"Added **{sound.name}** to **{name}** at position {n}."


async def test_playlist_plays_in_order_and_charges_each_sound(env: BotEnv) -> None:
    tones = [
        await env.add_tone("pl low", 300, seconds=SHORT),
        await env.add_tone("pl mid", 600, seconds=SHORT),
        await env.add_tone("pl high", 1200, seconds=SHORT),
    ]
    await _playlist(env, "rising", tones)
    await env.join_voice(env.alice)
    before = await _balance(env, env.alice.id)
    start = len(env.fake.audio_packets(env.guild.id))
    text = await env.reply_text(env.alice, "playlist play", {"playlist": "rising"})
    assert text == f"Queued 3 sounds from **rising** · {before - 3} credits left."
    assert await _heard(env, start, 3) == [3, 6, 12]
    assert await _balance(env, env.alice.id) == before - 3
    user = await env.services.users.get_by_discord_id(env.alice.id)
    history = await env.services.credits.history(user.id or 0, limit=3)
    assert [(t.action, t.meta["sound"], t.meta["source"]) for t in history.items] == [
        ("play", "pl high", "playlist"),
        ("play", "pl mid", "playlist"),
        ("play", "pl low", "playlist"),
    ]


async def test_move_remove_show_list_delete(env: BotEnv) -> None:
    a = await env.add_tone("pl a", 310, seconds=SHORT)
    b = await env.add_tone("pl b", 320, seconds=SHORT)
    c = await env.add_tone("pl c", 330, seconds=SHORT)
    await _playlist(env, "edit me", [a, b, c])

    shown = await env.reply_text(env.alice, "playlist show", {"playlist": "edit me"})
    assert shown.splitlines() == [
        "**edit me** · 3 sounds · 0.9 s",
        "1. pl a (0.3 s)",
        "2. pl b (0.3 s)",
        "3. pl c (0.3 s)",
    ]
    moved = await env.reply_text(
        env.alice, "playlist move", {"playlist": "edit me", "from": 3, "to": 1}
    )
    assert moved.splitlines()[1:] == ["1. pl c (0.3 s)", "2. pl a (0.3 s)", "3. pl b (0.3 s)"]
    removed = await env.reply_text(
        env.alice, "playlist remove", {"playlist": "edit me", "position": 2}
    )
    assert removed == "Removed **pl a** (position 2) from **edit me**."
    bad = await env.reply_text(env.alice, "playlist remove", {"playlist": "edit me", "position": 5})
    assert bad == "Position must be between 1 and 2."
    shown = await env.reply_text(env.alice, "playlist show", {"playlist": "edit me"})
    assert shown.splitlines()[1:] == ["1. pl c (0.3 s)", "2. pl b (0.3 s)"]

    listed = await env.reply_text(env.alice, "playlist list")
    assert "**edit me** · 2 sounds · 0.6 s" in listed.splitlines()
    choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.alice.id,
        "playlist show",
        {"playlist": "edi"},
        focused="playlist",
    )
    assert [c["value"] for c in choices] == ["edit me"]

    # Playlists are personal: bob neither sees nor edits alice's.
    assert await env.reply_text(env.bob, "playlist show", {"playlist": "edit me"}) == (
        "You have no playlist called 'edit me'."
    )
    assert await env.reply_text(env.bob, "playlist delete", {"playlist": "edit me"}) == (
        "You have no playlist called 'edit me'."
    )
    bob_choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.bob.id,
        "playlist show",
        {"playlist": ""},
        focused="playlist",
    )
    assert bob_choices == []

    duplicate = await env.reply_text(env.alice, "playlist create", {"name": "edit me"})
    assert duplicate == "You already have a playlist called 'edit me'."
    deleted = await env.reply_text(env.alice, "playlist delete", {"playlist": "edit me"})
    assert deleted == "Deleted the playlist **edit me**."
    assert await env.reply_text(env.alice, "playlist show", {"playlist": "edit me"}) == (
        "You have no playlist called 'edit me'."
    )
    # The sounds themselves stay in the library.
    assert (await env.services.sounds.get(a.id or 0)).name == "pl a"


async def test_running_out_of_credits_midway_stops_queuing(env: BotEnv) -> None:
    tones = [
        await env.add_tone("pl one", 400, seconds=SHORT),
        await env.add_tone("pl two", 800, seconds=SHORT),
        await env.add_tone("pl three", 1600, seconds=SHORT),
    ]
    await _playlist(env, "too long", tones)
    await env.join_voice(env.alice)
    user = await env.services.users.get_by_discord_id(env.alice.id)
    uid = user.id or 0
    balance = await _balance(env, env.alice.id)
    await env.services.credits.take(uid, balance - 2, reason="test: leave two")
    start = len(env.fake.audio_packets(env.guild.id))
    text = await env.reply_text(env.alice, "playlist play", {"playlist": "too long"})
    assert text.startswith(
        "Queued 2 of 3 sounds from **too long**, then stopped: "
        "Not enough credits: you have 0, this needs 1. Your next refill is at "
    ), text
    assert await _heard(env, start, 2) == [4, 8]
    assert await _balance(env, env.alice.id) == 0
    history = await env.services.credits.history(uid, limit=3)
    assert [t.action for t in history.items] == ["play", "play", "take"]

    # Nothing at all can be queued: the refusal is the whole answer, and nothing changes.
    text = await env.reply_text(env.alice, "playlist play", {"playlist": "too long"})
    assert text.startswith("Not enough credits: you have 0, this needs 1."), text
    assert [t.action for t in (await env.services.credits.history(uid, limit=1)).items] == ["play"]
    await env.services.credits.grant(uid, balance, reason="test: restore")
    assert await env.services.credits.verify() == []


async def test_play_needs_voice_and_a_non_empty_playlist(env: BotEnv) -> None:
    await env.reply_text(env.bob, "playlist create", {"name": "empty"})
    text = await env.reply_text(env.bob, "playlist play", {"playlist": "empty"})
    assert text == "**empty** is empty: add sounds with `/playlist add`."
    sound = await env.add_tone("pl lonely", 500, seconds=SHORT)
    await env.reply_text(env.bob, "playlist add", {"playlist": "empty", "sound": sound.name})
    await env.fake.set_user_voice(env.guild.id, env.bob.id, None)
    before = await _balance(env, env.bob.id)
    text = await env.reply_text(env.bob, "playlist play", {"playlist": "empty"})
    assert text == "Join a voice channel first, then try again."
    assert await _balance(env, env.bob.id) == before
