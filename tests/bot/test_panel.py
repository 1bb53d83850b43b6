"""/panel end to end: buttons that play, page arrows, deleted sounds, and a bot restart."""

from __future__ import annotations

import asyncio
from typing import Any

from core.models import Sound
from tests.bot.harness import BotEnv, answer_text
from tests.fakediscord import (
    FLAG_EPHEMERAL,
    audio_frames,
    decode_opus_to_pcm,
    dominant_frequency,
    find_buttons,
    find_custom_ids,
)


async def post_panel(env: BotEnv, tag: str) -> dict[str, Any]:
    inter = await env.slash(env.alice, "panel", {"tag": tag})
    callback = await inter.wait_for_callback()
    assert callback.type == 4  # a normal channel message, visible to everyone
    assert not int(callback.data.get("flags") or 0) & FLAG_EPHEMERAL
    message = inter.original_message
    assert message is not None
    return message


def play_ids(sounds: list[Sound]) -> list[str]:
    return [f"sb:play:{s.id}" for s in sounds]


def labels(message: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {
        str(b["custom_id"]): (str(b["label"]), bool(b.get("disabled")))
        for b in find_buttons(message)
    }


async def credits_of(env: BotEnv, discord_id: int) -> int:
    return (await env.services.users.get_by_discord_id(discord_id)).credits


async def click(env: BotEnv, message: dict[str, Any], custom_id: str) -> Any:
    return await env.fake.click_button(message, custom_id, env.alice.id)


async def test_panel_plays_charges_and_pages(env: BotEnv) -> None:
    await env.wait_idle()
    # 21 sounds: a full first page of 20 and one on the second. Only the two clicked below
    # are normalized, to keep the test quick.
    sounds = [
        await env.add_tone(
            f"pnl {n:02d}", 400 + 25 * n, seconds=0.4, tags=["pnl"], normalize=n in (0, 20)
        )
        for n in range(21)
    ]
    message = await post_panel(env, "pnl")
    assert "21 sounds" in message["content"]
    nav = ["sb:panel:0:pnl", "sb:panel:1:pnl", "sb:panel:2:pnl"]
    assert find_custom_ids(message) == play_ids(sounds[:20]) + nav
    rows = message["components"]
    assert [len(row["components"]) for row in rows] == [5, 5, 5, 5, 3]
    shown = labels(message)
    assert shown["sb:panel:0:pnl"] == ("◀", True)
    assert shown["sb:panel:1:pnl"] == ("page 1/2", True)
    assert shown["sb:panel:2:pnl"] == ("▶", False)
    assert shown[f"sb:play:{sounds[0].id}"] == ("pnl 00", False)

    # A click plays into the clicker's voice channel and costs one credit, like /play.
    await env.join_voice(env.alice)
    await env.services.users.ensure_discord_user(env.alice.id, "alice")
    before = await credits_of(env, env.alice.id)
    start = len(env.fake.audio_packets(env.guild.id))
    inter = await click(env, message, f"sb:play:{sounds[0].id}")
    text = await answer_text(inter)
    assert text == f"Playing **pnl 00** (0.4 s) · {before - 1} credits left."
    assert inter.callback is not None and int(inter.callback.data["flags"]) & FLAG_EPHEMERAL
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 400) <= 5
    assert await credits_of(env, env.alice.id) == before - 1
    user = await env.services.users.get_by_discord_id(env.alice.id)
    last = (await env.services.credits.history(user.id or 0, limit=1)).items[0]
    assert last.action == "play" and last.meta["source"] == "panel"
    assert last.meta["sound_id"] == sounds[0].id

    # ▶ turns the panel to page 2 (the same message, edited), ◀ back to page 1.
    inter = await click(env, message, "sb:panel:2:pnl")
    assert (await inter.wait_for_callback()).type == 7
    page2 = env.fake.messages[int(message["id"])]
    assert find_custom_ids(page2) == [
        *play_ids(sounds[20:]),
        "sb:panel:1:pnl",
        "sb:panel:2:pnl",
        "sb:panel:3:pnl",
    ]
    shown = labels(page2)
    assert shown["sb:panel:1:pnl"] == ("◀", False)
    assert shown["sb:panel:2:pnl"] == ("page 2/2", True)
    assert shown["sb:panel:3:pnl"] == ("▶", True)

    await env.wait_idle()  # the first sound's last packets are out; let the player finish
    start = len(env.fake.audio_packets(env.guild.id))
    inter = await click(env, page2, f"sb:play:{sounds[20].id}")
    assert (await answer_text(inter)).startswith("Playing **pnl 20**")
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 900) <= 5

    inter = await click(env, page2, "sb:panel:1:pnl")
    assert (await inter.wait_for_callback()).type == 7
    page1 = env.fake.messages[int(message["id"])]
    assert find_custom_ids(page1) == play_ids(sounds[:20]) + nav


async def test_panel_button_of_a_deleted_sound(env: BotEnv) -> None:
    await env.wait_idle()
    doomed = await env.add_tone("doomed", 1310, seconds=0.3, tags=["gone"], normalize=False)
    await env.add_tone("survivor", 1320, seconds=0.3, tags=["gone"], normalize=False)
    message = await post_panel(env, "gone")
    assert "sb:panel" not in " ".join(find_custom_ids(message))  # one page: no arrows
    await env.services.sounds.delete(doomed.id or 0)
    await env.join_voice(env.alice)
    await env.services.users.ensure_discord_user(env.alice.id, "alice")
    before = await credits_of(env, env.alice.id)
    components = env.fake.messages[int(message["id"])]["components"]
    start = len(env.fake.audio_packets(env.guild.id))

    inter = await click(env, message, f"sb:play:{doomed.id}")
    assert await answer_text(inter) == "That sound was deleted."
    assert inter.callback is not None and int(inter.callback.data["flags"]) & FLAG_EPHEMERAL
    assert await credits_of(env, env.alice.id) == before
    assert env.fake.messages[int(message["id"])]["components"] == components
    await asyncio.sleep(0.3)
    assert len(env.fake.audio_packets(env.guild.id)) == start


async def test_panel_for_an_unknown_tag(env: BotEnv) -> None:
    text = await env.reply_text(env.alice, "panel", {"tag": "Nothing-Here"})
    assert text == "No sound here has the tag 'nothing-here'."
    text = await env.reply_text(env.alice, "panel", {"tag": "not a tag!"})
    assert text.startswith("Tag 'not a tag!' is not valid")


async def test_panel_keeps_working_after_a_restart(env: BotEnv) -> None:
    await env.wait_idle()
    sound = await env.add_tone("phoenix", 1250, seconds=0.4, tags=["restart"])
    message = await post_panel(env, "restart")
    old = env.bot
    await env.restart_bot()
    assert env.bot is not old and old.is_closed()
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    inter = await click(env, message, f"sb:play:{sound.id}")
    assert (await answer_text(inter)).startswith("Playing **phoenix**")
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 1250) <= 5
    user = await env.services.users.get_by_discord_id(env.alice.id)
    last = (await env.services.credits.history(user.id or 0, limit=1)).items[0]
    assert last.meta["source"] == "panel" and last.meta["sound_id"] == sound.id
