"""Credits as members meet them: charged per play, refunded when a play cannot start, refused
when empty, shown by /credits; and /stats."""

from __future__ import annotations

import asyncio

from tests.bot.harness import BotEnv
from tests.fakediscord import audio_frames, decode_opus_to_pcm, dominant_frequency

SHORT = 0.3


async def _uid(env: BotEnv, discord_id: int) -> int:
    return (await env.services.users.get_by_discord_id(discord_id)).id or 0


async def _actions(env: BotEnv, user_id: int, limit: int = 50) -> list[str]:
    return [t.action for t in (await env.services.credits.history(user_id, limit=limit)).items]


async def test_play_is_charged_and_credits_shows_it(env: BotEnv) -> None:
    sound = await env.add_tone("cr beep", 700, seconds=SHORT)
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    text = await env.reply_text(env.alice, "play", {"sound": str(sound.id)})
    assert text == "Playing **cr beep** (0.3 s) · 99 credits left."
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert round(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) / 100) == 7
    uid = await _uid(env, env.alice.id)
    assert await _actions(env, uid) == ["play", "signup"]

    shown = (await env.reply_text(env.alice, "credits")).splitlines()
    assert shown[0] == "Your credits"
    assert shown[1] == "**99** credits · Free plan (holds up to 200)"
    assert shown[2].startswith("Next refill: +100 every 24 h, next <t:")
    assert shown[3].startswith("Recent: `-1` play · cr beep · <t:")
    assert shown[4].startswith("`+100` welcome credits · <t:")


async def test_missing_file_is_refused_before_charging(env: BotEnv) -> None:
    sound = await env.add_tone("cr gone", 710, seconds=SHORT)
    playback, _ = env.services.sounds.playback_file(sound)
    playback.unlink()  # the file vanished from disk after it was added
    await env.join_voice(env.bob)
    await env.reply_text(env.bob, "credits")  # bob's account, with his welcome credits
    uid = await _uid(env, env.bob.id)
    before = await _actions(env, uid, limit=50)
    text = await env.reply_text(env.bob, "play", {"sound": str(sound.id)})
    assert text == "The file of 'cr gone' is missing; ask an admin to run /admin scan."
    assert await _actions(env, uid, limit=50) == before


async def test_play_that_cannot_start_is_refunded(env: BotEnv) -> None:
    """A queued sound whose file disappears before its turn is refunded, not played."""
    first = await env.add_tone("cr first", 650, seconds=1.0)
    doomed = await env.add_tone("cr doomed", 735, seconds=SHORT)
    await env.join_voice(env.bob)
    await env.reply_text(env.bob, "credits")
    uid = await _uid(env, env.bob.id)
    before = await env.services.users.get(uid)
    start = len(env.fake.audio_packets(env.guild.id))
    assert (await env.reply_text(env.bob, "play", {"sound": str(first.id)})).startswith("Playing")
    queued = await env.reply_text(env.bob, "play", {"sound": str(doomed.id)})
    assert queued.startswith("Queued **cr doomed**")
    playback, _ = env.services.sounds.playback_file(doomed)
    playback.unlink()  # gone while waiting in the queue
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    for _ in range(100):
        if (await _actions(env, uid, limit=1)) == ["refund"]:
            break
        await asyncio.sleep(0.05)
    history = (await env.services.credits.history(uid, limit=3)).items
    assert [t.action for t in history] == ["refund", "play", "play"]
    assert history[0].meta["refund_of"] == history[1].id
    assert (await env.services.users.get(uid)).credits == before.credits - 1
    assert await env.services.credits.verify() == []
    await asyncio.sleep(0.3)
    rest = audio_frames(env.fake.audio_packets(env.guild.id)[start + len(packets) :])
    assert rest == []  # the doomed sound never played
    assert round(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) / 50) == 13


async def test_empty_balance_refuses_with_next_refill(env: BotEnv) -> None:
    sound = await env.add_tone("cr broke", 720, seconds=SHORT)
    await env.join_voice(env.bob)
    await env.reply_text(env.bob, "credits")
    uid = await _uid(env, env.bob.id)
    balance = (await env.services.users.get(uid)).credits
    await env.services.credits.take(uid, balance, reason="test: empty")
    ledger = await _actions(env, uid)
    summary = await env.services.users.summary(uid)
    start = len(env.fake.audio_packets(env.guild.id))
    text = await env.reply_text(env.bob, "play", {"sound": str(sound.id)})
    assert text == (
        "Not enough credits: you have 0, this needs 1. Your next refill is at "
        f"{summary.next_refill_at:%Y-%m-%d %H:%M} UTC."
    )
    await asyncio.sleep(0.3)
    assert len(env.fake.audio_packets(env.guild.id)) == start
    assert await _actions(env, uid) == ledger
    assert (await env.services.sounds.get(sound.id or 0)).play_count == 0
    shown = await env.reply_text(env.bob, "credits")
    assert "**0** credits" in shown
    await env.services.credits.grant(uid, balance, reason="test: restore")


async def test_only_managers_see_other_members_credits(env: BotEnv) -> None:
    await env.reply_text(env.alice, "credits")
    text = await env.reply_text(env.alice, "credits", {"member": env.bob.id})
    assert text == "You can only see your own credits."
    await env.reply_text(env.bob, "credits")
    shown = await env.reply_text(env.admin, "credits", {"member": env.bob.id})
    assert shown.splitlines()[0] == "Credits of bob"
    newcomer = await env.fake.add_member(env.guild.id, name="newcomer")
    text = await env.reply_text(env.admin, "credits", {"member": newcomer.id})
    assert text == "newcomer hasn't used the soundboard yet."
    # Looking did not create an account.
    users = await env.services.users.list_page(limit=100)
    assert newcomer.id not in {u.discord_id for u in users.items}


async def test_stats_lists_top_sounds_and_members(env: BotEnv) -> None:
    sound = await env.add_tone("cr top", 730, seconds=0.2)
    await env.join_voice(env.alice)
    for _ in range(3):
        start = len(env.fake.audio_packets(env.guild.id))
        await env.reply_text(env.alice, "play", {"sound": str(sound.id)})
        await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    inter = await env.slash(env.alice, "stats")
    callback = await inter.wait_for_callback()
    assert not callback.data.get("flags")  # for the whole channel to see
    embed = callback.data["embeds"][0]
    assert embed["title"] == "This week in Soundboard Test"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Most played"].splitlines()[0] == "1. cr top · 3 plays"
    assert fields["Most active"].splitlines()[0].startswith(f"1. <@{env.alice.id}> · ")
