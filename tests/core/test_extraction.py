"""Extraction end to end: real yt-dlp against a local media site, real files, real ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import Conflict, InvalidInput
from core.models import Extraction, ExtractionStatus, SoundType, User, utcnow
from core.repositories import extractions as repo
from core.services.container import Services
from core.services.media_fetch import JS_RUNTIME_MESSAGE, FetchLimits, MediaFetcher
from core.services.url_safety import AddressPolicy, FetchGuard
from tests.conftest import make_settings
from tests.core import audiogen
from tests.core import extraction_media as xm
from tests.core.extraction_media import MEDIA_SECONDS, MediaSite
from tests.core.helpers import make_user

media_files, media_site_session, site = xm.media_files, xm.media_site_session, xm.site

ROOT = Path(__file__).resolve().parents[2]
COST = 10


def extraction_settings(
    tmp_path: Path, database_url: str, site: MediaSite, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "extraction_allow_generic": True,
        "extraction_allow_private_hosts": [site.allow_entry],
        "extraction_timeout_seconds": 30,
        "extraction_lease_seconds": 5,
        "credits_extraction_cost": COST,
    }
    values.update(extra)
    return make_settings(tmp_path, database_url, **values)


@pytest.fixture
async def xs(tmp_path: Path, database_url: str, site: MediaSite) -> AsyncIterator[Services]:
    async with Services.from_settings(extraction_settings(tmp_path, database_url, site)) as svc:
        yield svc


async def ledger(services: Services, user: User) -> list[tuple[str, int]]:
    page = await services.credits.history(user.id or 0, limit=100)
    return [
        (row.action, row.amount)
        for row in reversed(page.items)
        if row.action in ("extraction", "refund")
    ]


async def balance(services: Services, user: User) -> int:
    return (await services.users.get(user.id or 0)).credits


async def extract(
    services: Services, url: str, user: User, *, guild: int = 4242, name: str | None = None
) -> Extraction:
    submitted = await services.extractions.submit(
        url, guild_id=guild, user_id=user.id or 0, name=name
    )
    assert submitted.job.status == ExtractionStatus.PENDING
    return await services.extractions.run_foreground(submitted.job.id or 0)


def leftovers(settings: Settings) -> list[Path]:
    return [p for p in settings.temp_dir.rglob("*")] if settings.temp_dir.exists() else []


@pytest.mark.parametrize("ext", ["mp3", "ogg", "m4a"])
async def test_direct_file_becomes_a_normalized_sound_charged_once(
    xs: Services, site: MediaSite, ext: str
) -> None:
    user = await make_user(xs, credits=100)
    job = await extract(xs, site.url(f"/media/tone.{ext}"), user, name=f"tone {ext}")
    assert job.status == ExtractionStatus.COMPLETED, job.error
    assert job.service == "Generic" and job.service_id == site.url(f"/media/tone.{ext}")
    assert job.attempts == 1 and job.progress == 1.0 and job.finished_at is not None
    sound = await xs.sounds.get(job.sound_id or 0)
    assert sound.name == f"tone {ext}" and sound.sound_type == SoundType.EXT
    assert sound.guild_id == 4242 and sound.uploader_id == user.id
    assert abs(sound.duration_ms - MEDIA_SECONDS * 1000) < 150
    original = xs.storage.original_path(SoundType.EXT, sound.original_filename)
    assert original.is_relative_to(xs.settings.sounds_dir / "originals" / "extracted")
    assert original.suffix == f".{ext}" and original.exists()
    # Playable: normalized into the Ogg Opus file the bot streams, at the loudness target.
    path, is_opus = xs.sounds.playback_file(sound)
    assert sound.is_normalized and is_opus and path.exists()
    info = audiogen.opus_stream_info(path)
    assert abs(info.duration_s - MEDIA_SECONDS) < 0.15
    assert abs(audiogen.meter(path).integrated - xs.settings.loudness_target_i) < 1.5
    assert await ledger(xs, user) == [("extraction", -COST)]
    assert await balance(xs, user) == 100 - COST
    assert leftovers(xs.settings) == []
    assert await xs.credits.verify() == []


async def test_page_with_embedded_audio_keeps_title_and_thumbnail(
    xs: Services, site: MediaSite
) -> None:
    user = await make_user(xs, credits=100)
    job = await extract(xs, site.url("/described.html?title=Morning+Bird"), user)
    assert job.status == ExtractionStatus.COMPLETED, job.error
    sound = await xs.sounds.get(job.sound_id or 0)
    assert sound.name == "Morning Bird" and job.title == "Morning Bird"
    thumb = xs.settings.thumbnail_dir / f"{sound.id}.png"
    assert thumb.read_bytes() == site.files.png
    # Other audio under the same title gets a numbered name.
    job2 = await extract(xs, site.url("/described.html?title=Morning+Bird&file=ogg"), user)
    assert job2.status == ExtractionStatus.COMPLETED, job2.error
    assert (await xs.sounds.get(job2.sound_id or 0)).name == "Morning Bird (2)"
    # An HTML5 <audio> element on a plain page.
    job3 = await extract(xs, site.url("/page.html"), user)
    assert job3.status == ExtractionStatus.COMPLETED, job3.error
    assert job3.service == "HTML5MediaEmbed" and job3.service_id == (
        site.url("/page.html") + "#page-1"
    )
    assert site.count("/media/tone.ogg") >= 1
    assert await ledger(xs, user) == [("extraction", -COST)] * 3


async def test_background_processor_runs_queued_jobs(xs: Services, site: MediaSite) -> None:
    user = await make_user(xs, credits=100)
    events: list[tuple[int, str]] = []

    async def on_event(event: Any) -> None:
        events.append((event.extraction_id, event.status))

    xs.events.subscribe(on_event)
    submitted = await xs.extractions.submit(
        site.url("/media/tone.ogg"), guild_id=1, user_id=user.id or 0
    )
    job_id = submitted.job.id or 0
    await xs.extractions.start_processor()
    try:
        job = await xs.extractions.wait(job_id, timeout=60)
    finally:
        await xs.extractions.stop_processor()
    assert job.status == ExtractionStatus.COMPLETED, job.error
    await asyncio.sleep(0.05)
    statuses = [s for i, s in events if i == job_id]
    assert statuses[0] == "pending" and "processing" in statuses and statuses[-1] == "completed"
    assert xs.metrics.extraction_jobs.value(status="completed") == 1


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/media/missing.mp3", "The page was not found (HTTP 404)."),
        ("/nomedia.html", "I couldn't find any audio or video at that link."),
    ],
)
async def test_failures_are_explained_and_refunded(
    xs: Services, site: MediaSite, path: str, reason: str
) -> None:
    user = await make_user(xs, credits=100)
    job = await extract(xs, site.url(path), user)
    assert job.status == ExtractionStatus.FAILED and job.error == reason
    assert job.sound_id is None
    assert await ledger(xs, user) == [("extraction", -COST), ("refund", COST)]
    assert await balance(xs, user) == 100
    assert await xs.sounds.list_all(guild_id=4242) == []
    assert leftovers(xs.settings) == []
    assert await xs.credits.verify() == []


async def test_playlists_are_refused(xs: Services, site: MediaSite) -> None:
    user = await make_user(xs, credits=100)
    job = await extract(xs, site.url("/two.html"), user)
    assert job.status == ExtractionStatus.FAILED
    assert job.error == (
        "That link is a playlist or a page with several videos; link one video instead."
    )
    assert site.count("/media/") == 0
    assert await balance(xs, user) == 100


def test_missing_javascript_runtime_is_reported_plainly(tmp_path: Path) -> None:
    fetcher = MediaFetcher(
        job_id=1,
        guard=FetchGuard(AddressPolicy()),
        policy=AddressPolicy(),
        workdir=tmp_path,
        limits=FetchLimits(max_duration_seconds=600, max_bytes=1000, socket_timeout=5),
        allow_generic=False,
        allowed_hosts=[],
    )
    # What yt-dlp says when YouTube cannot be solved without deno/node (yt-dlp 2025.11+).
    fetcher.logger.warning(
        "[youtube] abc: No supported JavaScript runtime could be found. Only deno is enabled "
        "by default; to use another runtime add  --js-runtimes RUNTIME[:PATH]"
    )
    error = fetcher.explain(Exception("ERROR: [youtube] abc: Requested format is not available"))
    assert str(error) == JS_RUNTIME_MESSAGE
    assert "yt-dlp-ejs" in JS_RUNTIME_MESSAGE and "deno" in JS_RUNTIME_MESSAGE
    plain = MediaFetcher(
        job_id=2,
        guard=FetchGuard(AddressPolicy()),
        policy=AddressPolicy(),
        workdir=tmp_path,
        limits=FetchLimits(max_duration_seconds=600, max_bytes=1000, socket_timeout=5),
        allow_generic=False,
        allowed_hosts=[],
    )
    error = plain.explain(Exception("ERROR: Unsupported URL: https://example.com/x"))
    assert str(error) == (
        "That site is not supported: only sites that yt-dlp knows can be used here."
    )


async def test_processor_runs_at_most_max_concurrent_jobs(
    tmp_path: Path, database_url: str, site: MediaSite
) -> None:
    settings = extraction_settings(
        tmp_path, database_url, site, extraction_max_concurrent=2, extraction_timeout_seconds=60
    )
    async with Services.from_settings(settings) as xs:
        user = await make_user(xs, credits=100)
        ids = [
            (
                await xs.extractions.submit(
                    site.url(f"/slow/tone.mp3?n={n}"), guild_id=3, user_id=user.id or 0
                )
            ).job.id
            or 0
            for n in range(3)
        ]
        await xs.extractions.start_processor()
        try:
            deadline = time.monotonic() + 30
            while True:  # two downloads stall mid-way; the third job must wait its turn
                jobs = [await xs.extractions.get(i) for i in ids]
                busy = [j for j in jobs if j.status == ExtractionStatus.PROCESSING]
                if len(busy) == 2 and all(j.progress > 0 for j in busy):
                    break
                assert time.monotonic() < deadline, jobs
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            jobs = [await xs.extractions.get(i) for i in ids]
            assert sorted(j.status.value for j in jobs) == ["pending", "processing", "processing"]
            site.release_slow()
            done = [await xs.extractions.wait(i, timeout=60) for i in ids]
        finally:
            await xs.extractions.stop_processor()
        assert [j.status for j in done] == [ExtractionStatus.COMPLETED] * 3, done


@pytest.mark.parametrize("path", ["/media/tone.mp3", "/chunked/tone.mp3"])
async def test_download_over_the_size_limit_is_refused(
    tmp_path: Path, database_url: str, site: MediaSite, media_files: Any, path: str
) -> None:
    # tone.mp3 is ~40 KB: with a Content-Length yt-dlp's max_filesize refuses it up front; the
    # chunked endpoint sends it 20 times without a length, so the download hook must cut it.
    settings = extraction_settings(tmp_path, database_url, site, extraction_max_bytes=30_000)
    assert media_files.mp3.stat().st_size > 30_000
    async with Services.from_settings(settings) as xs:
        user = await make_user(xs, credits=100)
        job = await extract(xs, site.url(path), user)
        assert job.status == ExtractionStatus.FAILED
        assert job.error and job.error.startswith("The download is too big"), job.error
        assert job.error.endswith("the limit is 30 KB).")
        assert await ledger(xs, user) == [("extraction", -COST), ("refund", COST)]
        assert leftovers(settings) == []


async def test_two_hour_metadata_is_refused_before_downloading(
    xs: Services, site: MediaSite
) -> None:
    user = await make_user(xs, credits=100)
    job = await extract(xs, site.url("/described.html?seconds=7200"), user)
    assert job.status == ExtractionStatus.FAILED
    assert job.error == "That is too long (120.0 min; the limit is 10 min)."
    # Checked from the metadata: yt-dlp may look at the media's headers once, but the
    # download never started (no progress was ever reported).
    assert site.count("/media/") <= 1 and job.progress == 0.0
    assert await balance(xs, user) == 100


async def test_hanging_server_times_out_and_refunds(
    tmp_path: Path, database_url: str, site: MediaSite
) -> None:
    settings = extraction_settings(tmp_path, database_url, site, extraction_timeout_seconds=3)
    async with Services.from_settings(settings) as xs:
        user = await make_user(xs, credits=100)
        started = time.monotonic()
        # Trickles a byte every 0.2 s with a 50 MB Content-Length: no socket timeout fires.
        job = await extract(xs, site.url("/trickle/tone.mp3"), user)
        elapsed = time.monotonic() - started
        assert job.status == ExtractionStatus.FAILED
        assert job.error == "The extraction took too long (the limit is 3 s)."
        assert elapsed < 3 + 8
        assert await ledger(xs, user) == [("extraction", -COST), ("refund", COST)]
        # A server that accepts and never answers: the socket timeout (same limit) trips.
        job = await extract(xs, site.url("/hang/tone.mp3"), user)
        assert job.status == ExtractionStatus.FAILED
        assert "too long" in (job.error or ""), job.error
        assert await balance(xs, user) == 100
        assert leftovers(settings) == []


async def test_same_url_twice_at_once_is_one_job_one_charge(xs: Services, site: MediaSite) -> None:
    user = await make_user(xs, credits=100)
    url = site.url("/media/tone.mp3")
    first, second = await asyncio.gather(
        xs.extractions.submit(url, guild_id=7, user_id=user.id or 0),
        xs.extractions.submit(url, guild_id=7, user_id=user.id or 0),
    )
    assert first.job.id == second.job.id and [first.reused, second.reused].count(True) == 1
    await xs.extractions.start_processor()
    try:
        job = await xs.extractions.wait(first.job.id or 0, timeout=60)
    finally:
        await xs.extractions.stop_processor()
    assert job.status == ExtractionStatus.COMPLETED, job.error
    assert len(await xs.sounds.list_all(guild_id=7)) == 1
    assert await ledger(xs, user) == [("extraction", -COST)]


async def test_two_links_to_the_same_media_give_one_sound_and_one_net_charge(
    xs: Services, site: MediaSite
) -> None:
    user = await make_user(xs, credits=100)
    direct = await xs.extractions.submit(
        site.url("/media/tone.mp3"), guild_id=8, user_id=user.id or 0
    )
    alias = await xs.extractions.submit(
        site.url("/alias/tone.mp3"), guild_id=8, user_id=user.id or 0
    )
    await xs.extractions.start_processor()
    try:
        jobs = [await xs.extractions.wait(j.job.id or 0, timeout=60) for j in (direct, alias)]
    finally:
        await xs.extractions.stop_processor()
    assert [j.status for j in jobs] == [ExtractionStatus.COMPLETED] * 2, [j.error for j in jobs]
    assert jobs[0].sound_id == jobs[1].sound_id
    assert {j.service_id for j in jobs} == {site.url("/media/tone.mp3")}
    assert len(await xs.sounds.list_all(guild_id=8)) == 1
    assert sorted(await ledger(xs, user)) == sorted(
        [("extraction", -COST), ("extraction", -COST), ("refund", COST)]
    )
    assert await balance(xs, user) == 100 - COST
    # Later, the same media again: the existing sound at once, charge refunded.
    site.reset()
    again = await extract(xs, site.url("/alias/tone.mp3"), user, guild=8)
    assert again.status == ExtractionStatus.COMPLETED and again.sound_id == jobs[0].sound_id
    # Only yt-dlp's header looks (following the redirect, then the direct-file check); a
    # download would be a third request.
    assert site.count("/media/tone.mp3") == 2
    assert await balance(xs, user) == 100 - COST
    assert await xs.credits.verify() == []


async def test_submit_refuses_without_charging(xs: Services, site: MediaSite) -> None:
    user = await make_user(xs, credits=5)
    with pytest.raises(Exception, match="Not enough credits"):
        await xs.extractions.submit(site.url("/media/tone.mp3"), guild_id=9, user_id=user.id or 0)
    rich = await make_user(xs, credits=100)
    for n in range(3):  # EXTRACTION_MAX_QUEUED_PER_USER
        await xs.extractions.submit(
            site.url(f"/media/tone.mp3?n={n}"), guild_id=9, user_id=rich.id or 0
        )
    with pytest.raises(InvalidInput, match="already have 3 extractions waiting"):
        await xs.extractions.submit(
            site.url("/media/tone.mp3?n=9"), guild_id=9, user_id=rich.id or 0
        )
    await make_sound(xs, "taken", guild=9)
    with pytest.raises(Conflict, match="A sound called 'taken' already exists"):
        await xs.extractions.submit(
            site.url("/media/tone.ogg"), guild_id=9, user_id=user.id or 0, name="taken"
        )
    assert await ledger(xs, rich) == [("extraction", -COST)] * 3
    assert await ledger(xs, user) == []
    assert site.hits == []


async def make_sound(services: Services, name: str, *, guild: int) -> None:
    path = services.settings.data_dir / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(
        audiogen.render, path, "sine=frequency=330:sample_rate=44100", seconds=0.5
    )
    await services.sounds.add_file(path, name=name, guild_id=guild, normalize=False)


def cli_env(settings: Settings, site: MediaSite) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXTRACTION_", "CREDITS_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        DATA_DIR=str(settings.data_dir),
        SOUNDS_DIR=str(settings.sounds_dir),
        EXTRACTION_ALLOW_GENERIC="true",
        EXTRACTION_ALLOW_PRIVATE_HOSTS=site.allow_entry,
        EXTRACTION_LEASE_SECONDS=str(settings.extraction_lease_seconds),
        CREDITS_EXTRACTION_COST=str(COST),
    )
    return env


async def run_cli(settings: Settings, site: MediaSite, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from soundboard_cli.main import entrypoint; entrypoint()",
        *args,
        cwd=settings.data_dir.parent,
        env=cli_env(settings, site),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_prints_the_sound_id_or_the_reason(xs: Services, site: MediaSite) -> None:
    settings = xs.settings
    code, out, err = await run_cli(
        settings, site, "extract", site.url("/media/tone.ogg"), "--guild", "55", "--user", "777"
    )
    assert code == 0, err
    sound = await xs.sounds.get(int(out.strip()))
    assert sound.guild_id == 55 and sound.sound_type == SoundType.EXT
    user = await xs.users.get_by_discord_id(777)
    assert await ledger(xs, user) == [("extraction", -COST)]
    code, out, err = await run_cli(
        settings,
        site,
        "extract",
        site.url("/nomedia.html"),
        "--guild",
        "55",
        "--user",
        "777",
        "--name",
        "x",
    )
    assert code == 1 and out == ""
    assert err.strip().endswith("error: I couldn't find any audio or video at that link.")
    code, _, err = await run_cli(
        settings, site, "extract", "file:///etc/passwd", "--guild", "55", "--user", "777"
    )
    assert code == 1 and "Only http:// and https:// links can be used." in err


async def test_worker_killed_mid_download_resumes_once_charged_once(
    xs: Services, site: MediaSite
) -> None:
    settings = xs.settings
    url = site.url("/slow/tone.mp3")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from soundboard_cli.main import entrypoint; entrypoint()",
        "extract",
        url,
        "--guild",
        "66",
        "--user",
        "888",
        cwd=settings.data_dir.parent,
        env=cli_env(settings, site),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        job = await wait_until(xs, lambda j: j.progress > 0, timeout=60)
        assert job.status == ExtractionStatus.PROCESSING and f"/{proc.pid}/" in (
            job.lease_owner or ""
        )
        (workdir,) = settings.temp_dir.glob(f"extract-{job.id}-*")
        assert any(workdir.iterdir())  # a partial download on disk
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    site.release_slow()
    stray = settings.temp_dir / "extract-999999"
    stray.mkdir(parents=True)
    (stray / "media.mp3.part").write_bytes(b"left behind")
    await xs.extractions.start_processor()  # "the bot restarts"
    assert not stray.exists()  # temporary files of dead jobs go at start
    try:
        done = await xs.extractions.wait(job.id or 0, timeout=60)
    finally:
        await xs.extractions.stop_processor()
    assert done.status == ExtractionStatus.COMPLETED, done.error
    assert done.attempts == 2
    user = await xs.users.get_by_discord_id(888)
    assert await ledger(xs, user) == [("extraction", -COST)]
    assert len(await xs.sounds.list_all(guild_id=66)) == 1
    assert leftovers(settings) == []
    assert await xs.credits.verify() == []


async def wait_until(xs: Services, check: Any, *, timeout: float) -> Extraction:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = await xs.extractions.list_page(limit=1)
        if page.items and check(page.items[0]):
            return page.items[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the job never got there")


async def test_claims_are_exclusive_and_a_lost_lease_cannot_finish_the_job(
    xs: Services, site: MediaSite
) -> None:
    ids = []
    for n in range(3):
        user = await make_user(xs, credits=100)
        submitted = await xs.extractions.submit(
            site.url(f"/media/tone.mp3?claim={n}"), guild_id=5, user_id=user.id or 0
        )
        ids.append(submitted.job.id)
    owners = [f"test/{n}/x" for n in range(8)]
    claimed = await asyncio.gather(*(xs.extractions.claim_next(o) for o in owners))
    got = [(job.id, job.lease_owner) for job in claimed if job is not None]
    assert sorted(i for i, _ in got) == sorted(ids)  # each job exactly once
    assert await xs.extractions.claim_next("test/late/x") is None
    job_id, first_owner = got[0]
    # The first worker stalls past its lease; another takes the job over.
    async with xs.db.transaction() as session:
        await repo.expire_lease(session, job_id=job_id or 0, owner=first_owner or "", now=utcnow())
    second = await xs.extractions.claim(job_id or 0, "test/second/x")
    assert second is not None and second.attempts == 2
    async with xs.db.transaction() as session:
        assert not await repo.update_owned(
            session,
            job_id=job_id or 0,
            owner=first_owner or "",
            status=ExtractionStatus.COMPLETED,
            finished_at=utcnow() + timedelta(seconds=1),
        )
    assert (await xs.extractions.get(job_id or 0)).status == ExtractionStatus.PROCESSING
