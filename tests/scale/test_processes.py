"""Several soundboard processes on one PostgreSQL database, started the way an operator does:
two `soundboard bot` shards and (where a test needs them) two `soundboard web` processes.

* a credit change made in one bot process reaches the live page of every web process;
* an API play sent to one web process plays in a guild another bot process owns;
* extraction jobs are shared out between the bot processes, each run and charged once;
* a bot process killed mid-download loses its job to the other once the lease runs out;
* a bot process frozen past its lease, once it wakes, leaves the new owner's download alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from core.config import load_settings
from core.models import Extraction, ExtractionStatus, Sound, SoundType, User, utcnow
from core.services.container import Services
from tests.bot.harness import answer_text
from tests.core import audiogen
from tests.core import extraction_media as xm
from tests.core.extraction_media import MediaSite
from tests.fakediscord import (
    FakeDiscord,
    FakeGuild,
    FakeMember,
    audio_frames,
    decode_opus_to_pcm,
    dominant_frequency,
)
from tests.scale.procs import (
    base_env,
    bot_env,
    free_port,
    process,
    session_cookie,
    sse_events,
    stop_all,
    wait_http,
    web_env,
)
from web.live import KEEPALIVE_SECONDS

media_files, media_site_session, site = xm.media_files, xm.media_site_session, xm.site

EXTRACTION_COST = 10
TONES = (400, 700)  # Hz: the "tone" sound of guild 0 and of guild 1
# On PostgreSQL the live page reads the ledger back only after KEEPALIVE_SECONDS without an
# event: a change seen sooner than that after the stream opened came over LISTEN/NOTIFY.
NOTIFY_WINDOW = KEEPALIVE_SECONDS - 1.0
STARTED = re.compile(r"extraction started job=(\d+) ")
FINISHED = re.compile(r"extraction finished job=(\d+) ")
COMPLETED = re.compile(r"extraction completed job=(\d+) ")


@dataclass
class Cluster:
    """Two bot processes (shards 0 and 1 of 2, guild n on shard n) and `webs` web processes."""

    tmp: Path
    fake: FakeDiscord
    services: Services  # the test's own view of the shared database
    guilds: list[FakeGuild]
    members: list[FakeMember]  # members[n] is in guilds[n]
    bots: list[asyncio.subprocess.Process]
    webs: list[str]  # base URLs

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def bot_index(self, job: Extraction) -> int:
        """Which bot process holds (or last held) the job's lease."""
        pid = int((job.lease_owner or "").split("/")[1])
        return [bot.pid for bot in self.bots].index(pid)

    async def add_tone(self, n: int) -> Sound:
        """A sine sound called 'tone' in guild n, at TONES[n] Hz."""
        path = await asyncio.to_thread(
            audiogen.render, self.tmp / f"tone{n}.wav", f"sine=frequency={TONES[n]}", seconds=0.5
        )
        added = await self.services.sounds.add_file(path, name="tone", guild_id=self.guilds[n].id)
        return added.sound

    async def user_for(self, n: int) -> User:
        """The soundboard account behind members[n] (as the bot would create it)."""
        member = self.members[n]
        return await self.services.users.create(
            display_name=member.user.username, discord_id=member.id
        )


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    pg_url: str,
    *,
    webs: int = 0,
    env: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> AsyncIterator[Cluster]:
    async with FakeDiscord(shard_count=2) as fake:
        guilds = [await fake.add_guild(name=f"shard{n}", shard_id=n) for n in (0, 1)]
        members = [await fake.add_member(g.id, name=f"m{n}") for n, g in enumerate(guilds)]
        shared = base_env(tmp_path, pg_url, **(env or {}))
        own = load_settings(
            database_url=pg_url,
            data_dir=tmp_path / "data",
            sounds_dir=tmp_path / "sounds",
            _env_file=None,
            **(settings or {}),
        )
        async with Services.from_settings(own) as services, contextlib.AsyncExitStack() as stack:
            bots = [
                await stack.enter_async_context(
                    process(
                        ["bot"], bot_env(fake, shared, shard=n, shards=2), tmp_path / f"bot{n}.log"
                    )
                )
                for n in (0, 1)
            ]
            ports = [free_port() for _ in range(webs)]
            web_procs = [
                await stack.enter_async_context(
                    process(["web"], web_env(shared, port), tmp_path / f"web{n}.log")
                )
                for n, port in enumerate(ports)
            ]
            try:
                urls = [f"http://127.0.0.1:{port}" for port in ports]
                await asyncio.gather(
                    fake.wait_for_gateway_ready(count=2, timeout=60),
                    *(wait_http(f"{url}/healthz", timeout=60) for url in urls),
                )
                yield Cluster(tmp_path, fake, services, guilds, members, bots, urls)
            finally:
                await stop_all([*web_procs, *bots])


def extraction_setup(site: MediaSite, **env: str) -> dict[str, Any]:
    """Extraction from the local media site: the bots' environment and the test's settings."""
    return {
        "env": {
            "EXTRACTION_ALLOW_GENERIC": "true",
            "EXTRACTION_ALLOW_PRIVATE_HOSTS": site.allow_entry,
            "EXTRACTION_MAX_CONCURRENT": "2",
            "EXTRACTION_TIMEOUT_SECONDS": "60",
            "CREDITS_EXTRACTION_COST": str(EXTRACTION_COST),
            # Loudness normalization is not what these tests are about: keep ffmpeg off the CPUs.
            "NORMALIZE_ON_ADD": "false",
            "NORMALIZE_WORKER_IN_BOT": "false",
            **env,
        },
        "settings": {
            "extraction_allow_generic": True,
            "extraction_allow_private_hosts": [site.allow_entry],
            "extraction_max_queued_per_user": 50,
            "credits_extraction_cost": EXTRACTION_COST,
        },
    }


async def wait_final(services: Services, job_ids: list[int], timeout: float) -> list[Extraction]:
    async with asyncio.timeout(timeout):
        return [await services.extractions.wait(i, timeout=timeout) for i in job_ids]


async def extraction_ledger(services: Services, user: User) -> list[tuple[str, int, int]]:
    """(action, amount, id) of the user's extraction charges and refunds, oldest first."""
    page = await services.credits.history(user.id or 0, limit=100)
    return [
        (row.action, row.amount, row.id or 0)
        for row in reversed(page.items)
        if row.action in ("extraction", "refund")
    ]


def max_running(log: str) -> int:
    """The most jobs one process ran at once, from its 'started' and 'finished' lines."""
    running = peak = 0
    for line in log.splitlines():
        if STARTED.search(line):
            running += 1
            peak = max(peak, running)
        elif FINISHED.search(line):
            running -= 1
    return peak


# ----- events and remote plays across processes ------------------------------------------------


async def test_credit_change_in_a_bot_process_reaches_every_web_process_live(
    tmp_path: Path, pg_url: str
) -> None:
    async with cluster(tmp_path, pg_url, webs=2) as c:
        await c.add_tone(0)
        guild, member = c.guilds[0], c.members[0]
        user = await c.user_for(0)
        start = user.credits
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
            )
            streams: list[tuple[float, AsyncIterator[tuple[str, Any]]]] = []
            for web in c.webs:  # the member's live page, open on both web processes
                response = await stack.enter_async_context(
                    http.get(f"{web}/credits/live", headers=session_cookie(user.id or 0))
                )
                assert response.status == 200, await response.text()
                assert response.headers["Content-Type"].startswith("text/event-stream")
                events = sse_events(response)
                assert await anext(events) == ("credits", {"balance": start, "row": None})
                streams.append((asyncio.get_running_loop().time(), events))
            # The play is handled, and charged, in bot process 0 (the shard owning guild 0).
            await c.fake.set_user_voice(guild.id, member.id, guild.voice_channel.id)
            inter = await c.fake.send_slash_command(
                guild.id, guild.text_channel.id, member.id, "play", {"sound": "tone"}
            )
            assert (await answer_text(inter, timeout=20)).startswith("Playing **tone**")
            seen: list[tuple[str, Any]] = []
            for opened, events in streams:
                async with asyncio.timeout_at(opened + NOTIFY_WINDOW):
                    seen.append(await anext(events))
            await c.fake.wait_for_silence_end(guild.id, timeout=20)
        page = await c.services.credits.history(user.id or 0, limit=10)
        plays = [row for row in page.items if row.action == "play"]
        assert [(row.amount, row.meta["source"]) for row in plays] == [(-1, "play")]
        for name, data in seen:  # the same ledger row, with the new balance, on both
            assert name == "credits" and data["balance"] == start - 1
            row = data["row"]
            assert (row["id"], row["action"], row["amount"]) == (plays[0].id, "play", -1)
            assert row["balance_after"] == start - 1
        assert await c.services.credits.verify() == []
    assert f"play started guild={guild.id}" in c.log("bot0")
    assert "play started" not in c.log("bot1")


async def test_api_play_sent_to_one_web_process_plays_in_another_shards_guild(
    tmp_path: Path, pg_url: str
) -> None:
    async with cluster(tmp_path, pg_url, webs=1) as c:
        sound = await c.add_tone(1)  # guild 1: owned by bot process 1
        guild, member = c.guilds[1], c.members[1]
        user = await c.user_for(1)
        token = (await c.services.accounts.create_token(user.id or 0, "hotkey")).plaintext
        await c.fake.set_user_voice(guild.id, member.id, guild.voice_channel.id)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{c.webs[0]}/api/v1/sounds/{sound.id}/play",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            body = await response.json()
        assert body["status"] == "played" and body["position"] == 0
        assert body["guild"] == str(guild.id)
        assert body["balance_after"] == user.credits - 1
        assert body["sound"] == {"id": sound.id, "name": "tone"}
        packets = await c.fake.wait_for_silence_end(guild.id, timeout=20)
        pcm = decode_opus_to_pcm(audio_frames(packets))
        assert abs(dominant_frequency(pcm) - TONES[1]) <= 5
        assert c.fake.audio_packets(c.guilds[0].id) == []
        page = await c.services.credits.history(user.id or 0, limit=10)
        plays = [row for row in page.items if row.action == "play"]
        assert [(row.amount, row.meta["source"]) for row in plays] == [(-1, "api")]
        assert int(plays[0].meta["guild_id"]) == guild.id
        assert (await c.services.users.get(user.id or 0)).credits == user.credits - 1
        assert await c.services.credits.verify() == []
    bot0, bot1, web0 = c.log("bot0"), c.log("bot1"), c.log("web0")
    assert f"play started guild={guild.id}" in bot1
    assert re.search(rf"remote play request=\w+ guild={guild.id} user={member.id} ", bot1)
    assert "play started" not in bot0 and "remote play" not in bot0
    assert re.search(rf"remote play answered request=\w+ user={user.id} .* ok=True", web0)


# ----- extraction workers in two processes -------------------------------------------------------


async def test_twenty_jobs_over_four_workers_in_two_processes_run_and_charge_once(
    tmp_path: Path, pg_url: str, site: MediaSite
) -> None:
    async with cluster(tmp_path, pg_url, **extraction_setup(site)) as c:
        users = [
            await c.services.users.create(display_name=f"x{n}", discord_id=8_000_000 + n)
            for n in range(4)
        ]
        job_ids: list[int] = []
        for n in range(20):  # a guild each: the same audio is one sound per guild
            submitted = await c.services.extractions.submit(
                site.url(f"/media/tone.mp3?job={n}"),
                guild_id=910_000 + n,
                user_id=users[n % 4].id or 0,
            )
            assert not submitted.reused
            job_ids.append(submitted.job.id or 0)
        done = await wait_final(c.services, job_ids, timeout=50)
        assert [j.status for j in done] == [ExtractionStatus.COMPLETED] * 20, [
            (j.id, j.error) for j in done
        ]
        assert [j.attempts for j in done] == [1] * 20
        # Both processes took jobs (the lease owner names the worker's pid).
        assert sorted({c.bot_index(j) for j in done}) == [0, 1]
        sounds = [await c.services.sounds.get(j.sound_id or 0) for j in done]
        assert len({s.id for s in sounds}) == 20
        assert [(s.guild_id, s.sound_type) for s in sounds] == [
            (910_000 + n, SoundType.EXT) for n in range(20)
        ]
        for user in users:  # charged once per job, at submit; nothing refunded
            rows = await extraction_ledger(c.services, user)
            assert [(action, amount) for action, amount, _ in rows] == [
                ("extraction", -EXTRACTION_COST)
            ] * 5
            charges = {j.charge_transaction_id for j in done if j.user_id == user.id}
            assert {row_id for _, _, row_id in rows} == charges
            balance = (await c.services.users.get(user.id or 0)).credits
            assert balance == user.credits - 5 * EXTRACTION_COST
        assert await c.services.credits.verify() == []
        assert not list(c.services.settings.temp_dir.glob("extract-*"))
    logs = [c.log("bot0"), c.log("bot1")]
    completed = [[int(m) for m in COMPLETED.findall(log)] for log in logs]
    # Every job completed in exactly one process, each process ran some, two at a time at most
    # (EXTRACTION_MAX_CONCURRENT): four workers in all.
    assert Counter(completed[0] + completed[1]) == Counter(j.id for j in done)
    assert all(completed)
    assert [max_running(log) for log in logs] == [2, 2]


async def start_slow_job(c: Cluster, site: MediaSite, user: User, guild_id: int) -> Extraction:
    """Queue a download of the slow media and wait until a bot process is mid-way through it
    (the rest of the file waits for site.release_slow())."""
    submitted = await c.services.extractions.submit(
        site.url("/slow/tone.mp3"), guild_id=guild_id, user_id=user.id or 0
    )
    async with asyncio.timeout(30):
        while True:
            job = await c.services.extractions.get(submitted.job.id or 0)
            if job.status == ExtractionStatus.PROCESSING and job.progress > 0:
                return job
            await asyncio.sleep(0.1)


def run_folders(c: Cluster, job_id: int) -> list[Path]:
    """The job's working folders on the shared volume (one per run: extract-JOB-RUN)."""
    return sorted(c.services.settings.temp_dir.glob(f"extract-{job_id}-*"))


def downloading(folder: Path) -> bool:
    return folder.exists() and any(f.name.endswith(".part") for f in folder.iterdir())


async def check_taken_over_once(
    c: Cluster, job_id: int, user: User, guild_id: int, survivor: int
) -> None:
    """The job completed in `survivor` on its second attempt, charged once, nothing left."""
    (done,) = await wait_final(c.services, [job_id], timeout=40)
    assert done.status == ExtractionStatus.COMPLETED, done.error
    assert done.attempts == 2
    assert c.bot_index(done) == survivor
    assert [(a, n) for a, n, _ in await extraction_ledger(c.services, user)] == [
        ("extraction", -EXTRACTION_COST)
    ]
    assert (await c.services.users.get(user.id or 0)).credits == user.credits - EXTRACTION_COST
    sounds = await c.services.sounds.list_all(guild_id=guild_id)
    assert [s.id for s in sounds] == [done.sound_id]
    assert await c.services.credits.verify() == []
    assert not list(c.services.settings.temp_dir.glob("extract-*"))


async def test_killed_worker_loses_its_job_to_the_other_process_when_the_lease_ends(
    tmp_path: Path, pg_url: str, site: MediaSite
) -> None:
    setup = extraction_setup(site, EXTRACTION_LEASE_SECONDS="3")
    async with cluster(tmp_path, pg_url, **setup) as c:
        user = await c.services.users.create(display_name="victim", discord_id=8_100_000)
        job = await start_slow_job(c, site, user, guild_id=920_000)
        job_id = job.id or 0
        victim = c.bot_index(job)
        survivor = 1 - victim
        (folder,) = run_folders(c, job_id)
        assert downloading(folder)  # a partial download on the shared volume
        c.bots[victim].send_signal(signal.SIGKILL)
        await c.bots[victim].wait()
        held = await c.services.extractions.get(job_id)
        # The dead worker's lease still runs: the other process must wait for it to end.
        assert held.lease_owner == job.lease_owner
        assert held.lease_until is not None and held.lease_until > utcnow()
        site.release_slow()
        await check_taken_over_once(c, job_id, user, 920_000, survivor)
    logs = [c.log("bot0"), c.log("bot1")]
    assert f"extraction started job={job_id} " in logs[victim]
    assert f"extraction completed job={job_id} " not in logs[victim]
    assert f"extraction started job={job_id} " in logs[survivor]
    assert COMPLETED.findall(logs[survivor]) == [str(job_id)]


async def test_stalled_worker_that_lost_its_job_leaves_the_new_owners_files_alone(
    tmp_path: Path, pg_url: str, site: MediaSite
) -> None:
    """A worker frozen past its lease (SIGSTOP: a long GC pause, a hung disk, a suspended VM)
    wakes up, finds the job taken over and cleans up after itself, while the other process is
    still downloading the same job. Until each run had a folder of its own, the woken worker
    removed the other's folder and the job failed ("Unable to rename file") and was refunded."""
    setup = extraction_setup(site, EXTRACTION_LEASE_SECONDS="3")
    async with cluster(tmp_path, pg_url, **setup) as c:
        user = await c.services.users.create(display_name="sleeper", discord_id=8_200_000)
        job = await start_slow_job(c, site, user, guild_id=930_000)
        job_id = job.id or 0
        stalled = c.bot_index(job)
        survivor = 1 - stalled
        (first,) = run_folders(c, job_id)
        c.bots[stalled].send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(30):  # the lease ends; the other process takes over
                while not any(downloading(f) for f in run_folders(c, job_id) if f != first):
                    await asyncio.sleep(0.1)
        finally:
            c.bots[stalled].send_signal(signal.SIGCONT)
        (second,) = [f for f in run_folders(c, job_id) if f != first]
        taken = await c.services.extractions.get(job_id)
        assert taken.attempts == 2 and c.bot_index(taken) == survivor
        async with asyncio.timeout(30):  # the woken worker notices and cleans up its run
            while f"extraction finished job={job_id} " not in c.log(f"bot{stalled}"):
                await asyncio.sleep(0.1)
        assert downloading(second)
        site.release_slow()
        await check_taken_over_once(c, job_id, user, 930_000, survivor)
    logs = [c.log("bot0"), c.log("bot1")]
    assert f"extraction completed job={job_id} " not in logs[stalled]
    assert COMPLETED.findall(logs[survivor]) == [str(job_id)]
