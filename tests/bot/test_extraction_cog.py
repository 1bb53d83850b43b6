"""/extract and /extractions end to end: the real bot and processor, the fake Discord, real
yt-dlp against the local media site."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from core.models import ExtractionStatus
from tests.bot.harness import BotEnv, answer_text, bot_env
from tests.core import extraction_media as xm
from tests.dbutil import (
    PostgresTemplates,
    SqliteTemplates,
    fresh_database,
)
from tests.fakediscord import audio_frames

media_files, media_site_session = xm.media_files, xm.media_site_session


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_templates: SqliteTemplates,
    pg_templates: PostgresTemplates | None,
    media_site_session: xm.MediaSite,
) -> AsyncIterator[BotEnv]:
    url = await fresh_database(request.param, sqlite_templates, pg_templates)
    async with bot_env(
        tmp_path_factory.mktemp("bot"),
        url,
        extraction_allow_generic=True,
        extraction_allow_private_hosts=[media_site_session.allow_entry],
        extraction_timeout_seconds=30,
    ) as environment:
        yield environment


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for row in message.get("components") or [] for c in row.get("components") or []]


async def test_extract_answers_pending_then_completes_with_a_play_button(
    env: BotEnv, media_site_session: xm.MediaSite
) -> None:
    site = media_site_session
    url = site.url("/media/tone.ogg")
    inter = await env.slash(env.alice, "extract", {"url": url, "name": "bird call"})
    callback = await inter.wait_for_callback(timeout=5)
    assert callback.type == 4  # answered at once, not deferred
    content = callback.data["content"]
    assert "**pending**" in content and url in content
    job_id = int(content.split("#", 1)[1].split(":", 1)[0])

    final = await inter.wait_for_original(
        lambda m: "**completed**" in m["content"] or "**failed**" in m["content"], timeout=60
    )
    assert "Added **bird call** (1.5 s)" in final["content"], final["content"]
    job = await env.services.extractions.get(job_id)
    assert job.status == ExtractionStatus.COMPLETED and job.sound_id is not None
    assert job.channel_id == env.guild.text_channel.id
    [button] = buttons(final)
    assert button["custom_id"] == f"sb:play:{job.sound_id}" and button["label"] == "Play"

    # The button plays the new sound in the member's voice channel.
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    click = await env.fake.click_button(final, button["custom_id"], env.alice.id)
    text = await answer_text(click)
    assert text.startswith("Playing **bird call**"), text
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=15)
    assert len(audio_frames(packets)) > 0.8 * 1.5 / 0.020

    # Charged once for the extraction, once for the play.
    user = await env.services.users.get_by_discord_id(env.alice.id)
    history = await env.services.credits.history(user.id or 0)
    assert [t.action for t in history.items][:3] == ["play", "extraction", "signup"]

    listing = await env.reply_text(env.alice, "extractions")
    assert f"#{job_id} · **completed (sound {job.sound_id})**" in listing


async def test_the_answer_shows_download_progress(
    env: BotEnv, media_site_session: xm.MediaSite
) -> None:
    site = media_site_session
    site.reset()  # /slow/ stalls after its first 8 KiB until released
    inter = await env.slash(env.bob, "extract", {"url": site.url("/slow/tone.mp3?bot=1")})
    await inter.wait_for_callback(timeout=5)

    def downloading(message: dict[str, Any]) -> bool:
        found = re.search(r"\*\*processing\*\* .*\((\d+)% downloaded\)", message["content"])
        return found is not None and 0 < int(found.group(1)) < 100

    await inter.wait_for_original(downloading, timeout=30)
    site.release_slow()
    final = await inter.wait_for_original(lambda m: "**completed**" in m["content"], timeout=60)
    assert len(buttons(final)) == 1


async def test_failed_extraction_shows_the_reason_and_managers_see_everyone(
    env: BotEnv, media_site_session: xm.MediaSite
) -> None:
    site = media_site_session
    inter = await env.slash(env.bob, "extract", {"url": site.url("/nomedia.html")})
    await inter.wait_for_callback(timeout=5)
    final = await inter.wait_for_original(lambda m: "**failed**" in m["content"], timeout=60)
    assert "I couldn't find any audio or video at that link." in final["content"]
    assert buttons(final) == []
    bob_list = await env.reply_text(env.bob, "extractions")
    assert "**failed: I couldn't find any audio or video at that link.**" in bob_list
    assert "bird call" not in bob_list  # only bob's own jobs
    admin_list = await env.reply_text(env.admin, "extractions")
    assert "Extractions in this server:" in admin_list
    assert f"<@{env.bob.id}>" in admin_list


async def test_unsafe_url_is_refused_at_once_without_a_charge(
    env: BotEnv, media_site_session: xm.MediaSite
) -> None:
    member = await env.fake.add_member(env.guild.id, name="mallory")
    url = f"http://2130706433:{media_site_session.port}/media/tone.mp3"
    text = await env.reply_text(member, "extract", {"url": url})
    assert "local or private network address" in text
    user = await env.services.users.get_by_discord_id(member.id)
    history = await env.services.credits.history(user.id or 0)
    assert [t.action for t in history.items] == ["signup"]
