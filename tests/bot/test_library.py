"""/sounds, /upload and /sound end to end: the real bot, the fake Discord, a real database."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from core.errors import NotFound
from core.models import Sound
from tests.bot.harness import BotEnv, answer_text
from tests.core import audiogen
from tests.fakediscord import (
    FLAG_EPHEMERAL,
    FakeMember,
    audio_frames,
    decode_opus_to_pcm,
    dominant_frequency,
    find_buttons,
)

LINE_RE = re.compile(r"^(\d+)\. \*\*(.+?)\*\* · ([\d.]+) s · (\d+) plays?$")


@pytest.fixture(scope="module")
def two_hour_mp3(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Two hours of 8 kHz mono silence at 8 kbit/s: 7 MB, far over the 10 minute limit."""
    path = tmp_path_factory.mktemp("long") / "two-hours.mp3"
    audiogen._run(
        [
            *("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "7200"),
            *("-c:a", "libmp3lame", "-b:a", "8k", str(path)),
        ]
    )
    return path.read_bytes()


async def tone_bytes(env: BotEnv, name: str, freq: int, *, suffix: str = ".mp3") -> bytes:
    path = await asyncio.to_thread(
        audiogen.render,
        env.tmp / f"{name}{suffix}",
        f"sine=frequency={freq}:sample_rate=48000",
        seconds=0.5,
        rate=48000,
    )
    return path.read_bytes()


def listed(message: dict[str, Any]) -> list[tuple[int, str, str, int]]:
    """(number, name, seconds, plays) of each line of a /sounds page."""
    (embed,) = message["embeds"]
    rows = []
    for line in embed["description"].splitlines():
        found = LINE_RE.match(line)
        assert found, line
        rows.append((int(found[1]), found[2], found[3], int(found[4])))
    return rows


def button(message: dict[str, Any], label: str) -> dict[str, Any]:
    (found,) = [b for b in find_buttons(message) if b.get("label") == label]
    return dict(found)


async def upload(
    env: BotEnv, user: FakeMember, name: str, attachment: dict[str, Any], tags: str | None = None
) -> str:
    options: dict[str, Any] = {"name": name, "file": attachment}
    if tags is not None:
        options["tags"] = tags
    inter = await env.slash(user, "upload", options)
    text = await answer_text(inter, timeout=20)
    callback = inter.callback
    assert callback is not None and callback.type == 5  # deferred, thinking
    assert int(callback.data.get("flags") or 0) & FLAG_EPHEMERAL
    return text


async def library(env: BotEnv) -> list[Sound]:
    return await env.services.sounds.list_all(guild_id=env.guild.id)


def leftover_uploads(env: BotEnv) -> list[Path]:
    temp = env.services.storage.temp
    return sorted(temp.glob("upload-*")) if temp.exists() else []


async def test_sounds_pages_forward_and_back(env: BotEnv) -> None:
    for n in range(13):
        await env.add_tone(f"pager {n:02d}", 300 + 20 * n, seconds=0.3, normalize=False)
    expected = [s.name for s in await library(env)]  # oldest first, like the listing
    assert len(expected) >= 13
    inter = await env.slash(env.alice, "sounds")
    callback = await inter.wait_for_callback()
    assert callback.type == 4 and not int(callback.data.get("flags") or 0) & FLAG_EPHEMERAL
    message = inter.original_message
    assert message is not None
    assert message["embeds"][0]["title"] == "Sounds"
    assert button(message, "◀ Previous").get("disabled") is True
    pages = [listed(message)]
    while not button(message, "Next ▶").get("disabled"):
        click = await env.fake.click_button(
            message, button(message, "Next ▶")["custom_id"], env.alice.id
        )
        assert (await click.wait_for_callback()).type == 7  # the list itself is edited
        message = env.fake.messages[int(message["id"])]
        pages.append(listed(message))
        assert message["embeds"][0]["footer"]["text"] == f"Page {len(pages)}"
    assert [len(p) for p in pages[:-1]] == [10] * (len(pages) - 1) and 1 <= len(pages[-1]) <= 10
    rows = [row for page in pages for row in page]
    assert [name for _, name, _, _ in rows] == expected
    assert [number for number, _, _, _ in rows] == list(range(1, len(expected) + 1))
    pager = {name: (seconds, plays) for _, name, seconds, plays in rows if "pager" in name}
    assert pager == {f"pager {n:02d}": ("0.3", 0) for n in range(13)}

    # Someone else cannot turn the pages.
    before = env.fake.messages[int(message["id"])]["embeds"]
    click = await env.fake.click_button(
        message, button(message, "◀ Previous")["custom_id"], env.bob.id
    )
    text = await answer_text(click)
    assert text == "Only the member who ran /sounds can turn its pages; run /sounds yourself."
    assert int((click.callback.data.get("flags") if click.callback else 0) or 0) & FLAG_EPHEMERAL
    assert env.fake.messages[int(message["id"])]["embeds"] == before

    # Back to the first page, through every page in between.
    for index in range(len(pages) - 2, -1, -1):
        click = await env.fake.click_button(
            message, button(message, "◀ Previous")["custom_id"], env.alice.id
        )
        await click.wait_for_callback()
        message = env.fake.messages[int(message["id"])]
        assert listed(message) == pages[index]
    assert button(message, "◀ Previous").get("disabled") is True
    assert not button(message, "Next ▶").get("disabled")


async def test_sounds_search_and_tag_filters(env: BotEnv) -> None:
    await env.add_tone("filter cat", 1110, seconds=0.3, normalize=False, tags=["animals"])
    await env.add_tone("filter dog", 1120, seconds=0.3, normalize=False, tags="animals, loud")
    await env.add_tone("filter car", 1130, seconds=0.3, normalize=False, tags=["loud"])

    async def names(options: dict[str, Any]) -> list[str]:
        inter = await env.slash(env.alice, "sounds", options)
        await inter.wait_for_callback()
        message = inter.original_message
        assert message is not None
        assert button(message, "Next ▶").get("disabled") is True
        return [name for _, name, _, _ in listed(message)]

    assert await names({"search": "filter"}) == ["filter cat", "filter dog", "filter car"]
    assert await names({"search": "FILTER D"}) == ["filter dog"]
    assert await names({"tag": "animals"}) == ["filter cat", "filter dog"]
    assert await names({"tag": "loud", "search": "car"}) == ["filter car"]
    text = await env.reply_text(env.alice, "sounds", {"search": "no such thing anywhere"})
    assert text == "No sound matches that."


async def test_upload_adds_a_normalized_playable_sound(env: BotEnv) -> None:
    data = await tone_bytes(env, "boing-source", 660)
    attachment = env.fake.add_attachment("Boing.MP3", data)
    text = await upload(env, env.alice, "boing", attachment, tags="Fun, test")
    assert re.fullmatch(r"Added \*\*boing\*\* \(0\.[56] s\)\.", text), text
    sound = await env.services.sounds.find(env.guild.id, "boing")
    alice = await env.services.users.get_by_discord_id(env.alice.id)
    assert sound.uploader_id == alice.id
    assert sound.is_normalized and sound.normalized_filename
    (view,) = await env.services.sounds.views([sound])
    assert view.tags == ["fun", "test"]
    assert view.normalized_path is not None and view.normalized_path.exists()
    assert view.original_path is not None and view.original_path.read_bytes() == data
    assert leftover_uploads(env) == []

    info = await env.reply_text(env.bob, "sound info", {"sound": str(sound.id)})
    assert f"ID: {sound.id}" in info and "Plays: 0" in info
    assert f"Uploader: <@{env.alice.id}>" in info
    assert "Tags: fun, test" in info and "Normalized: yes" in info

    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    played = await env.reply_text(env.alice, "play", {"sound": "boing"})
    assert played.startswith("Playing **boing**")
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=10)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 660) <= 5


async def test_upload_refusals_change_nothing(env: BotEnv, two_hour_mp3: bytes) -> None:
    taken = await env.add_tone("taken", 710, seconds=0.3, normalize=False)
    taken_bytes = (env.tmp / "taken-710.wav").read_bytes()
    other = await tone_bytes(env, "other", 720)
    before = await library(env)

    text = await upload(
        env, env.alice, "words", env.fake.add_attachment("words.mp3", b"not audio at all\n" * 50)
    )
    assert text.startswith("That file is not usable audio"), text

    text = await upload(
        env, env.alice, "notes", env.fake.add_attachment("notes.txt", b"hello", "text/plain")
    )
    assert text.startswith("That doesn't look like an audio file; upload one of: "), text

    # Declared far over the limit: refused from the declared size alone. The bytes are gone
    # from the CDN, so a download attempt would have failed with another message.
    huge = env.fake.add_attachment("huge.mp3", other)
    del env.fake.attachments[int(huge["id"])]
    huge["size"] = 40_000_000
    text = await upload(env, env.alice, "huge", huge)
    assert text == "The file is too big (40.0 MB; the limit is 26.2 MB).", text

    text = await upload(env, env.alice, "long", env.fake.add_attachment("long.mp3", two_hour_mp3))
    assert text == "The sound is too long (120.0 min; the limit is 10 min).", text

    text = await upload(env, env.alice, "taken", env.fake.add_attachment("t.mp3", other))
    assert text == "A sound called 'taken' already exists here.", text

    text = await upload(env, env.alice, "x" * 500, env.fake.add_attachment("x.mp3", other))
    assert text == "Sound names can be at most 100 characters.", text

    text = await upload(env, env.alice, "copy", env.fake.add_attachment("copy.wav", taken_bytes))
    assert text == "This audio is already in the library as 'taken'.", text

    text = await upload(env, env.alice, "bad tags", env.fake.add_attachment("b.mp3", other), "a b")
    assert text.startswith("Tag 'a b' is not valid"), text

    after = await library(env)
    assert [(s.id, s.name) for s in after] == [(s.id, s.name) for s in before]
    assert (await env.services.sounds.get(taken.id or 0)).name == "taken"
    assert leftover_uploads(env) == []


async def test_upload_role_restricts_who_may_upload(env: BotEnv) -> None:
    role = await env.fake.add_role(env.guild.id, "Uploaders")
    carol = await env.fake.add_member(env.guild.id, name="carol", roles=[role.id])
    await env.services.guilds.update(env.guild.id, upload_role_id=role.id)
    try:
        text = await upload(
            env, env.bob, "bob's", env.fake.add_attachment("b.mp3", await tone_bytes(env, "b", 741))
        )
        assert text == "Only members with the Uploaders role can upload sounds here."
        with pytest.raises(NotFound):
            await env.services.sounds.find(env.guild.id, "bob's")

        text = await upload(
            env, carol, "carol's", env.fake.add_attachment("c.mp3", await tone_bytes(env, "c", 742))
        )
        assert text.startswith("Added **carol's**"), text
        carol_user = await env.services.users.get_by_discord_id(carol.id)
        assert (await env.services.sounds.find(env.guild.id, "carol's")).uploader_id == (
            carol_user.id
        )

        text = await upload(
            env,
            env.admin,
            "admin's",
            env.fake.add_attachment("a.mp3", await tone_bytes(env, "a", 743)),
        )
        assert text.startswith("Added **admin's**"), text
    finally:
        await env.services.guilds.update(env.guild.id, upload_role_id=None)
    assert leftover_uploads(env) == []


async def uploaded_by_alice(env: BotEnv, name: str, freq: int) -> Sound:
    alice = await env.services.users.ensure_discord_user(env.alice.id, "alice")
    return await env.add_tone(name, freq, seconds=0.3, normalize=False, uploader_id=alice.id)


async def tags_of(env: BotEnv, sound: Sound) -> list[str]:
    return (await env.services.sounds.views([await env.services.sounds.get(sound.id or 0)]))[0].tags


async def test_sound_commands_for_the_uploader(env: BotEnv) -> None:
    sound = await uploaded_by_alice(env, "mine", 810)
    choices = await env.fake.autocomplete(
        env.guild.id,
        env.guild.text_channel.id,
        env.alice.id,
        "sound info",
        {"sound": "min"},
        focused="sound",
    )
    assert {"name": "mine", "value": str(sound.id)} in choices

    info = await env.reply_text(env.alice, "sound info", {"sound": str(sound.id)})
    assert info.splitlines()[0] == "mine"
    assert "Duration: 0.3 s" in info and "Tags: —" in info and "Normalized: no" in info

    text = await env.reply_text(
        env.alice, "sound rename", {"sound": str(sound.id), "name": "  mine   renamed "}
    )
    assert text == "Renamed **mine** to **mine renamed**."
    assert (await env.services.sounds.get(sound.id or 0)).name == "mine renamed"

    text = await env.reply_text(
        env.alice, "sound tag", {"sound": "mine renamed", "tags": "Loud, short"}
    )
    assert text == "Tags of **mine renamed**: `loud`, `short`."
    assert await tags_of(env, sound) == ["loud", "short"]
    text = await env.reply_text(env.alice, "sound tag", {"sound": str(sound.id)})
    assert text == "Removed all tags from **mine renamed**."
    assert await tags_of(env, sound) == []

    text = await env.reply_text(env.alice, "sound delete", {"sound": str(sound.id)})
    assert text == "Deleted **mine renamed**."
    with pytest.raises(NotFound):
        await env.services.sounds.get(sound.id or 0)
    text = await env.reply_text(env.alice, "sound info", {"sound": "mine renamed"})
    assert text == "No sound called 'mine renamed' here."


async def test_sound_commands_refused_for_others_allowed_for_managers(env: BotEnv) -> None:
    sound = await uploaded_by_alice(env, "alices", 820)
    await env.services.sounds.set_tags(sound.id or 0, ["keep"])
    refusal = (
        "Only the member who uploaded this sound or members who can manage this server "
        "can change it."
    )
    ident = str(sound.id)
    assert (
        await env.reply_text(env.bob, "sound rename", {"sound": ident, "name": "bobs"}) == refusal
    )
    assert await env.reply_text(env.bob, "sound tag", {"sound": ident, "tags": "x"}) == refusal
    assert await env.reply_text(env.bob, "sound delete", {"sound": ident}) == refusal
    unchanged = await env.services.sounds.get(sound.id or 0)
    assert unchanged.name == "alices" and await tags_of(env, sound) == ["keep"]

    text = await env.reply_text(env.admin, "sound rename", {"sound": ident, "name": "moderated"})
    assert text == "Renamed **alices** to **moderated**."
    text = await env.reply_text(env.admin, "sound tag", {"sound": ident, "tags": "checked"})
    assert text == "Tags of **moderated**: `checked`."
    assert await tags_of(env, sound) == ["checked"]
    assert await env.reply_text(env.admin, "sound delete", {"sound": ident}) == (
        "Deleted **moderated**."
    )
    with pytest.raises(NotFound):
        await env.services.sounds.get(sound.id or 0)
