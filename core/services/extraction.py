"""Extraction: pull audio from video and audio sites into a guild's library, in the background.

`ExtractionService.submit` checks the URL, charges CREDITS_EXTRACTION_COST and queues a job
row; an `ExtractionProcessor` in the bot process claims pending jobs from the database (at most
EXTRACTION_MAX_CONCURRENT at once) and runs them; `soundboard extract` runs one job in the
foreground. A job: detect the media with yt-dlp (no download), skip media this guild already
has (refunding the charge), check duration and size, download through the address guard,
add the file as an EXT sound (copied atomically, deduplicated, normalized), keep the
thumbnail, mark the job completed. A failure marks it failed and refunds the charge.

Crash safety: a worker holds a lease on its job (renewed while it works); a job whose lease ran
out is claimed again, oldest first. Every write a worker makes is conditional on still holding
the lease, so a job is completed at most once; the charge is made once at submit and a refund
is made only after checking the ledger for an earlier refund of that charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlmodel import col

from core import audio
from core.config import ConfigError, Settings
from core.db import Database
from core.errors import Conflict, NotFound, SoundboardError, TooManyJobs
from core.events import EventBus, ExtractionUpdated
from core.ffmpeg import base_args, run_ffmpeg
from core.metrics import Metrics
from core.models import CreditTransaction, Extraction, ExtractionStatus, SoundType, utcnow
from core.repositories import extractions as repo
from core.repositories import guilds
from core.repositories import sounds as sounds_repo
from core.repositories.base import Page
from core.services.credits import Action, CreditsService
from core.services.media_fetch import FetchError, FetchLimits, MediaFetcher, MediaInfo
from core.services.sounds import MAX_NAME_LENGTH, SoundService, clean_name
from core.services.url_safety import AddressPolicy, FetchGuard, check_url
from core.storage import AUDIO_EXTENSIONS, temp_path_beside

if TYPE_CHECKING:
    from core.services.container import Services

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3
POLL_SECONDS = 2.0
HEARTBEAT_SECONDS = 1.0
THREAD_GRACE_SECONDS = 10.0
THUMBNAIL_SECONDS = 15.0
WORKDIR_PREFIX = "extract-"
FINAL = (ExtractionStatus.COMPLETED, ExtractionStatus.FAILED)
INTERNAL_ERROR = "Something went wrong on my side; it has been logged. Try again later."


class LeaseLost(Exception):
    """Another worker took the job over (our lease expired): drop our work quietly."""


@dataclass
class SubmitResult:
    job: Extraction
    reused: bool = False  # the same URL was already queued in this guild: that job is returned


def describe_status(job: Extraction) -> str:
    """One line for lists: status, progress and what came out."""
    if job.status == ExtractionStatus.PROCESSING:
        return f"processing ({round(job.progress * 100)}%)"
    if job.status == ExtractionStatus.FAILED:
        return f"failed: {job.error or 'unknown error'}"
    return job.status.value


def _owner_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Run:
    """One job being worked on by this process."""

    job: Extraction
    owner: str
    guard: FetchGuard
    fetcher: MediaFetcher
    workdir: Path
    progress: float = 0.0
    written_progress: float = 0.0
    lost: bool = False
    threads: set[asyncio.Future[Any]] = field(default_factory=set)

    @property
    def job_id(self) -> int:
        assert self.job.id is not None
        return self.job.id


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def _forget_thread(run: _Run) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        run.threads.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a cancelled job's late error is expected

    return done


class ExtractionService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        events: EventBus,
        credits: CreditsService,
        sounds: SoundService,
        metrics: Metrics,
    ) -> None:
        self._db = db
        self.settings = settings
        self._events = events
        self._credits = credits
        self._sounds = sounds
        self._metrics = metrics
        try:
            self.policy = AddressPolicy.from_entries(settings.extraction_allow_private_hosts)
        except ValueError as exc:
            raise ConfigError(f"invalid setting EXTRACTION_ALLOW_PRIVATE_HOSTS: {exc}") from None
        self._submit_locks: dict[tuple[int, str], tuple[asyncio.Lock, int]] = {}
        self._live_owners: set[str] = set()
        self.processor: ExtractionProcessor | None = None

    @classmethod
    def wire(cls, services: Services) -> ExtractionService:
        return cls(
            services.db,
            services.settings,
            services.events,
            services.credits,
            services.sounds,
            services.metrics,
        )

    # ----- submitting ---------------------------------------------------------------------

    async def submit(
        self,
        url: str,
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None = None,
        name: str | None = None,
    ) -> SubmitResult:
        """Check and queue a job, charging for it. Raises a SoundboardError with a member-facing
        message (bad or unsafe URL, name taken, too many queued jobs, not enough credits)."""
        checked = check_url(
            url, policy=self.policy, allowed_hosts=self.settings.extraction_allowed_hosts
        )
        url = checked.url
        requested = clean_name(name) if name is not None and name.strip() else None
        # One submission per guild and URL at a time in this process, so the same link sent
        # twice at once becomes one job and one charge (the second gets the first's job).
        key = (guild_id, url)
        lock, users = self._submit_locks.get(key, (asyncio.Lock(), 0))
        self._submit_locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._submit_locked(
                    url,
                    guild_id=guild_id,
                    user_id=user_id,
                    channel_id=channel_id,
                    requested=requested,
                )
        finally:
            lock, users = self._submit_locks[key]
            if users <= 1:
                del self._submit_locks[key]
            else:
                self._submit_locks[key] = (lock, users - 1)

    async def _submit_locked(
        self,
        url: str,
        *,
        guild_id: int,
        user_id: int,
        channel_id: int | None,
        requested: str | None,
    ) -> SubmitResult:
        async with self._db.session() as session:
            existing = await repo.active_for_url(session, guild_id=guild_id, url=url)
            if existing is not None:
                return SubmitResult(existing, reused=True)
            if requested is not None and await sounds_repo.get_by_name(
                session, guild_id=guild_id, name=requested
            ):
                raise Conflict(f"A sound called '{requested}' already exists here.")
            self._check_quota(await repo.count_active_for_user(session, user_id=user_id))
        cost = self.settings.credits_extraction_cost
        charge: CreditTransaction | None = None
        if cost > 0:
            charge = await self._credits.deduct(
                user_id,
                cost,
                action=Action.EXTRACTION,
                meta={"url": url[:300], "guild_id": str(guild_id)},
            )
        try:
            async with self._db.transaction() as session:
                await repo.lock_key(session, f"extraction-user:{user_id}")
                self._check_quota(await repo.count_active_for_user(session, user_id=user_id))
                await guilds.ensure(session, guild_id=guild_id)
                job = await repo.add(
                    session,
                    Extraction(
                        url=url,
                        requested_name=requested,
                        user_id=user_id,
                        guild_id=guild_id,
                        channel_id=channel_id,
                        charge_transaction_id=charge.id if charge else None,
                    ),
                )
        except BaseException:
            if charge is not None:
                await asyncio.shield(
                    self._credits.refund(
                        user_id, cost, of_transaction=charge.id, reason="extraction not queued"
                    )
                )
            raise
        log.info(
            "extraction queued job=%s guild=%s user=%s url=%r charge=%s",
            job.id,
            guild_id,
            user_id,
            url[:200],
            charge.id if charge else None,
        )
        await self._publish(job)
        if self.processor is not None:
            self.processor.wake()
        return SubmitResult(job)

    def _check_quota(self, active: int) -> None:
        cap = self.settings.extraction_max_queued_per_user
        if active >= cap:
            raise TooManyJobs(
                f"You already have {active} extractions waiting (the limit is {cap}); "
                "try again when one has finished."
            )

    # ----- reading ------------------------------------------------------------------------

    async def get(self, job_id: int) -> Extraction:
        async with self._db.session() as session:
            job = await repo.get(session, job_id=job_id)
        if job is None:
            raise NotFound("That extraction does not exist.")
        return job

    async def list_page(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        cursor: str | None = None,
        limit: int = 25,
    ) -> Page[Extraction]:
        async with self._db.session() as session:
            return await repo.list_page(
                session, guild_id=guild_id, user_id=user_id, cursor=cursor, limit=limit
            )

    async def wait(self, job_id: int, *, timeout: float) -> Extraction:
        """Poll until the job is completed or failed (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.status in FINAL or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(0.2)

    # ----- claiming -----------------------------------------------------------------------

    def new_owner(self) -> str:
        owner = _owner_id()
        self._live_owners.add(owner)
        return owner

    def retire_owner(self, owner: str) -> None:
        self._live_owners.discard(owner)

    async def claim_next(self, owner: str) -> Extraction | None:
        async with self._db.session() as session:
            # A read first: an idle poll never takes SQLite's write lock.
            if not await repo.any_claimable(session, now=utcnow()):
                return None
        async with self._db.transaction() as session:
            return await repo.claim_next(
                session,
                owner=owner,
                lease_seconds=self.settings.extraction_lease_seconds,
                now=utcnow(),
            )

    async def claim(self, job_id: int, owner: str) -> Extraction | None:
        async with self._db.transaction() as session:
            return await repo.claim(
                session,
                job_id=job_id,
                owner=owner,
                lease_seconds=self.settings.extraction_lease_seconds,
                now=utcnow(),
            )

    async def run_foreground(self, job_id: int, *, timeout: float | None = None) -> Extraction:
        """Run one job here and now (the CLI). If another worker holds it, wait for it."""
        owner = self.new_owner()
        try:
            limit = timeout or self.settings.extraction_timeout_seconds * MAX_ATTEMPTS + 60
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                job = await self.claim(job_id, owner)
                if job is not None:
                    return await self.process(job, owner)
                current = await self.get(job_id)
                if current.status in FINAL:
                    return current
                await asyncio.sleep(0.5)
            return await self.get(job_id)
        finally:
            self.retire_owner(owner)

    # ----- recovery -----------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: free the jobs of workers that died on this machine, remove their
        temporary files, and refund failed jobs whose refund a crash interrupted."""
        now = utcnow()
        host = socket.gethostname()
        async with self._db.session() as session:
            busy = await repo.processing(session)
        live: set[int] = set()
        for job in busy:
            owner = job.lease_owner or ""
            parts = owner.split("/")
            dead = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                pid = int(parts[1])
                dead = owner not in self._live_owners if pid == os.getpid() else not _pid_alive(pid)
            if dead:
                async with self._db.transaction() as session:
                    await repo.expire_lease(session, job_id=job.id or 0, owner=owner, now=now)
                log.info("extraction lease of dead worker expired job=%s owner=%s", job.id, owner)
            elif job.lease_until is not None and job.lease_until >= now:
                live.add(job.id or 0)
        await asyncio.to_thread(self._clean_workdirs, keep=live)
        async with self._db.session() as session:
            failed = await repo.failed_with_charge(session, since=now - timedelta(days=2))
        for job in failed:
            await self._refund_once(job, job.error or "extraction failed")
        await self.refresh_metrics()

    def _clean_workdirs(self, *, keep: set[int]) -> None:
        root = self.settings.temp_dir
        if not root.exists():
            return
        for path in root.glob(f"{WORKDIR_PREFIX}*"):
            ident = path.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
            if ident.isdigit() and int(ident) in keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed leftover extraction folder path=%s", path)

    # ----- running a job ------------------------------------------------------------------

    def _workdir(self, job_id: int) -> Path:
        """A folder of this run's own (extract-JOB-RUN): a worker that lost its lease and cleans
        up after itself must not remove the files of the worker that took the job over."""
        return self.settings.temp_dir / f"{WORKDIR_PREFIX}{job_id}-{uuid.uuid4().hex[:8]}"

    def _clean_job_workdirs(self, job_id: int) -> None:
        """Remove the folders of the job's earlier runs (a dead worker's, or a stalled one's:
        its run is lost anyway, since every write it makes checks the lease)."""
        for path in self.settings.temp_dir.glob(f"{WORKDIR_PREFIX}{job_id}-*"):
            shutil.rmtree(path, ignore_errors=True)

    async def process(self, job: Extraction, owner: str) -> Extraction:
        """Run a claimed job to its end; returns the job as it ended up."""
        assert job.id is not None
        started = time.monotonic()
        workdir = self._workdir(job.id)
        await asyncio.to_thread(self._clean_job_workdirs, job.id)  # what earlier runs left
        await asyncio.to_thread(_fresh_dir, workdir)
        guard = FetchGuard(self.policy)
        run = _Run(
            job=job,
            owner=owner,
            guard=guard,
            workdir=workdir,
            fetcher=MediaFetcher(
                job_id=job.id,
                guard=guard,
                policy=self.policy,
                workdir=workdir,
                limits=FetchLimits(
                    max_duration_seconds=self.settings.extraction_max_duration_seconds,
                    max_bytes=self.settings.extraction_max_bytes,
                    socket_timeout=float(min(30, self.settings.extraction_timeout_seconds)),
                ),
                allow_generic=self.settings.extraction_allow_generic,
                allowed_hosts=self.settings.extraction_allowed_hosts,
                cache_dir=self.settings.data_dir / "cache" / "yt-dlp",
            ),
        )
        run.fetcher.progress = lambda fraction: setattr(run, "progress", fraction)
        log.info(
            "extraction started job=%s guild=%s user=%s attempt=%s",
            job.id,
            job.guild_id,
            job.user_id,
            job.attempts,
        )
        await self._publish(job)
        heartbeat = asyncio.create_task(self._heartbeat(run))
        outcome = "failed"
        try:
            if job.attempts > MAX_ATTEMPTS:
                raise FetchError(
                    f"Gave up after {MAX_ATTEMPTS} attempts: the worker stopped each time."
                )
            async with asyncio.timeout(self.settings.extraction_timeout_seconds):
                fetched = await self._fetch(run)
            if fetched is not None:
                # Outside the timeout: a sound is never left half added by a cancellation.
                await self._finish(run, *fetched)
            outcome = "completed"
        except LeaseLost:
            outcome = "lease lost"
            log.warning("extraction lease lost job=%s owner=%s", job.id, owner)
        except TimeoutError:
            await self._fail(
                run,
                f"The extraction took too long (the limit is "
                f"{self.settings.extraction_timeout_seconds} s).",
            )
        except (FetchError, SoundboardError) as exc:
            await self._fail(run, str(exc))
        except asyncio.CancelledError:
            outcome = "released"
            await asyncio.shield(self._release(run))
            raise
        except Exception:
            log.exception("extraction crashed job=%s guild=%s", job.id, job.guild_id)
            await self._fail(run, INTERNAL_ERROR)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._settle_threads(run)
            run.fetcher.close()
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
            log.info(
                "extraction finished job=%s guild=%s user=%s outcome=%s duration_ms=%s",
                job.id,
                job.guild_id,
                job.user_id,
                outcome,
                round((time.monotonic() - started) * 1000),
            )
            with contextlib.suppress(Exception):
                await self.refresh_metrics()
        return await self.get(job.id)

    async def _fetch(self, run: _Run) -> tuple[MediaInfo, Path] | None:
        """Detect, deduplicate, check and download; None when the media was a duplicate."""
        job = run.job
        media = await self._in_thread(run, run.fetcher.probe, job.url)
        if not await self._owned_update(run, title=media.title):
            raise LeaseLost
        log.info(
            "extraction detected job=%s service=%s id=%r duration=%s",
            job.id,
            media.service,
            media.service_id[:100],
            media.duration,
        )
        while True:
            duplicate_sound, peer = await self._dedupe(run, media)
            if duplicate_sound is not None:
                await self._complete_duplicate(run, media, duplicate_sound)
                return None
            if peer is None:
                break
            await asyncio.sleep(0.5)  # another job is fetching the same media: wait for it
        await self._in_thread(run, run.fetcher.check_limits, media)
        path = await self._in_thread(run, run.fetcher.download, media)
        run.progress = 1.0
        duration_ms = await audio.get_audio_duration_async(path)
        limit = self.settings.extraction_max_duration_seconds
        if duration_ms > limit * 1000:
            raise FetchError(
                f"That is too long ({duration_ms / 60000:.1f} min; the limit is "
                f"{limit / 60:.0f} min)."
            )
        if media.has_video or path.suffix.lower() not in AUDIO_EXTENSIONS:
            path = await self._audio_only(path)
        return media, path

    async def _finish(self, run: _Run, media: MediaInfo, path: Path) -> None:
        """Add the sound, keep the thumbnail, mark the job completed."""
        job = run.job
        await self._renew(run)
        result = await self._add_sound(run, media, path)
        sound_id = result.sound.id
        assert sound_id is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(THUMBNAIL_SECONDS):
                await self._store_thumbnail(run, media, sound_id)
        now = utcnow()
        if not await self._owned_update(
            run,
            status=ExtractionStatus.COMPLETED,
            sound_id=sound_id,
            progress=1.0,
            error=None,
            lease_until=None,
            finished_at=now,
        ):
            raise LeaseLost
        job.status = ExtractionStatus.COMPLETED
        job.sound_id = sound_id
        log.info(
            "extraction completed job=%s guild=%s user=%s sound=%s new=%s",
            job.id,
            job.guild_id,
            job.user_id,
            sound_id,
            result.created,
        )
        await self._publish(job, progress=1.0)

    async def _dedupe(self, run: _Run, media: MediaInfo) -> tuple[int | None, int | None]:
        """(sound of an earlier job for the same media, id of a job fetching it right now).

        The media's service and id are written only when this job goes on to fetch it, in the
        same locked transaction as the checks: of several jobs for the same media exactly one
        fetches, the others wait for it (and never for each other)."""
        job = run.job
        async with self._db.transaction() as session:
            await repo.lock_key(
                session, f"extraction:{job.guild_id}:{media.service}:{media.service_id}"
            )
            done = await repo.completed_duplicate(
                session,
                guild_id=job.guild_id,
                service=media.service,
                service_id=media.service_id,
                exclude_id=run.job_id,
            )
            if done is not None:
                return done.sound_id, None
            peer = await repo.active_peer(
                session,
                guild_id=job.guild_id,
                service=media.service,
                service_id=media.service_id,
                exclude_id=run.job_id,
                now=utcnow(),
            )
            if peer is not None:
                return None, peer.id
            if not await repo.update_owned(
                session,
                job_id=run.job_id,
                owner=run.owner,
                service=media.service,
                service_id=media.service_id,
                updated_at=utcnow(),
            ):
                raise LeaseLost
        return None, None

    async def _complete_duplicate(self, run: _Run, media: MediaInfo, sound_id: int) -> None:
        job = run.job
        await self._refund_once(job, "already in the library")
        if not await self._owned_update(
            run,
            service=media.service,
            service_id=media.service_id,
            status=ExtractionStatus.COMPLETED,
            sound_id=sound_id,
            progress=1.0,
            error=None,
            lease_until=None,
            finished_at=utcnow(),
        ):
            raise LeaseLost
        job.status = ExtractionStatus.COMPLETED
        job.sound_id = sound_id
        log.info(
            "extraction duplicate job=%s guild=%s user=%s sound=%s",
            job.id,
            job.guild_id,
            job.user_id,
            sound_id,
        )
        await self._publish(job, progress=1.0)

    async def _add_sound(self, run: _Run, media: MediaInfo, path: Path) -> Any:
        job = run.job
        if job.requested_name:
            return await self._sounds.add_file(
                path,
                name=job.requested_name,
                guild_id=job.guild_id,
                sound_type=SoundType.EXT,
                uploader_id=job.user_id,
            )
        base = " ".join("".join(ch for ch in media.title if ord(ch) >= 32).split())
        base = base[:MAX_NAME_LENGTH] or f"extracted {job.id}"
        for attempt in range(1, 21):
            name = base if attempt == 1 else f"{base[: MAX_NAME_LENGTH - 6]} ({attempt})"
            async with self._db.session() as session:
                taken = await sounds_repo.get_by_name(session, guild_id=job.guild_id, name=name)
            if taken is not None:
                continue
            try:
                return await self._sounds.add_file(
                    path,
                    name=name,
                    guild_id=job.guild_id,
                    sound_type=SoundType.EXT,
                    uploader_id=job.user_id,
                )
            except Conflict:
                continue  # taken meanwhile: the next candidate
        raise Conflict("Give the sound a name: the title is taken many times over here.")

    async def _audio_only(self, path: Path) -> Path:
        """Video (or an odd container) in, Ogg Opus audio out: only the audio is kept."""
        target = path.with_name("audio.ogg")
        result = await run_ffmpeg(
            [
                *base_args(),
                *audio.decode_input_args(path),
                "-map",
                "0:a:0",
                "-vn",
                "-sn",
                "-dn",
                "-c:a",
                "libopus",
                "-b:a",
                "160k",
                audio.ffmpeg_input(target),
            ],
            timeout=float(self.settings.extraction_timeout_seconds),
        )
        if result.returncode != 0 or not await asyncio.to_thread(target.exists):
            raise FetchError("The download has no usable audio track.")
        await asyncio.to_thread(path.unlink, missing_ok=True)
        return target

    async def _store_thumbnail(self, run: _Run, media: MediaInfo, sound_id: int) -> None:
        try:
            found = await self._in_thread(run, run.fetcher.fetch_thumbnail, media)
        except (FetchError, SoundboardError):
            return
        if found is None:
            return
        data, ext = found
        target = self.settings.thumbnail_dir / f"{sound_id}{ext}"

        def write() -> None:
            tmp = temp_path_beside(target)
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)

        try:
            await asyncio.to_thread(write)
        except OSError:
            log.warning("thumbnail not stored job=%s", run.job_id, exc_info=True)

    # ----- worker plumbing ----------------------------------------------------------------

    async def _in_thread(self, run: _Run, func: Callable[..., T], *args: Any) -> T:
        """Run blocking yt-dlp work in a thread. If we are cancelled (timeout, shutdown), the
        guard shuts the job's sockets so the thread stops soon; we wait a little for it."""
        future: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(func, *args))
        run.threads.add(future)
        future.add_done_callback(_forget_thread(run))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            run.guard.cancel("The extraction was stopped.")
            raise

    async def _settle_threads(self, run: _Run) -> None:
        if not run.threads:
            return
        run.guard.cancel(run.guard.cancel_reason or "The extraction was stopped.")
        _, pending = await asyncio.wait(set(run.threads), timeout=THREAD_GRACE_SECONDS)
        if pending:
            log.warning("extraction worker thread still busy job=%s", run.job_id)

    async def _heartbeat(self, run: _Run) -> None:
        """Renew the lease and publish progress while the job runs."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._renew(run)
            except LeaseLost:
                run.lost = True
                run.guard.cancel("Another worker took this job over.")
                return
            except Exception:
                log.warning("extraction heartbeat failed job=%s", run.job_id, exc_info=True)

    async def _renew(self, run: _Run) -> None:
        progress = round(run.progress, 3)
        values: dict[str, Any] = {
            "lease_until": utcnow() + timedelta(seconds=self.settings.extraction_lease_seconds),
            "updated_at": utcnow(),
        }
        changed = progress != run.written_progress
        if changed:
            values["progress"] = progress
        if not await self._owned_update(run, **values):
            raise LeaseLost
        if changed:
            run.written_progress = progress
            run.job.progress = progress
            await self._publish(run.job, progress=progress)

    async def _owned_update(self, run: _Run, **values: Any) -> bool:
        values.setdefault("updated_at", utcnow())
        async with self._db.transaction() as session:
            return await repo.update_owned(session, job_id=run.job_id, owner=run.owner, **values)

    async def _fail(self, run: _Run, message: str) -> None:
        job = run.job
        message = message[:1000]
        if not await self._owned_update(
            run,
            status=ExtractionStatus.FAILED,
            error=message,
            lease_until=None,
            finished_at=utcnow(),
        ):
            log.warning("extraction failure not recorded (lease lost) job=%s", job.id)
            return
        job.status = ExtractionStatus.FAILED
        job.error = message
        log.info(
            "extraction failed job=%s guild=%s user=%s reason=%r",
            job.id,
            job.guild_id,
            job.user_id,
            message,
        )
        await self._refund_once(job, message)
        await self._publish(job)

    async def _release(self, run: _Run) -> None:
        """Shutdown: hand the job back to the queue (not counted as an attempt)."""
        try:
            async with self._db.transaction() as session:
                released = await repo.update_owned(
                    session,
                    job_id=run.job_id,
                    owner=run.owner,
                    status=ExtractionStatus.PENDING,
                    lease_owner=None,
                    lease_until=None,
                    progress=0.0,
                    attempts=max(0, run.job.attempts - 1),
                    updated_at=utcnow(),
                )
            if released:
                log.info("extraction released for later job=%s", run.job_id)
        except Exception:
            log.warning("extraction release failed job=%s", run.job_id, exc_info=True)

    async def _refund_once(self, job: Extraction, reason: str) -> None:
        """Refund the job's charge unless the ledger already holds its refund."""
        charge_id = job.charge_transaction_id
        if charge_id is None:
            return
        async with self._db.session() as session:
            charge = await session.get(CreditTransaction, charge_id)
            if charge is None or charge.amount >= 0:
                return
            refunds = (
                await session.scalars(
                    select(CreditTransaction).where(
                        col(CreditTransaction.user_id) == job.user_id,
                        col(CreditTransaction.action) == Action.REFUND,
                        col(CreditTransaction.id) > charge_id,
                    )
                )
            ).all()
        if any((row.meta or {}).get("refund_of") == charge_id for row in refunds):
            return
        await self._credits.refund(
            job.user_id, -charge.amount, of_transaction=charge_id, reason=reason[:200]
        )

    async def _publish(self, job: Extraction, *, progress: float | None = None) -> None:
        await self._events.publish(
            ExtractionUpdated(
                extraction_id=job.id or 0,
                status=job.status.value,
                progress=job.progress if progress is None else progress,
            )
        )

    async def refresh_metrics(self) -> None:
        async with self._db.session() as session:
            counts = await repo.counts_by_status(session)
        for status, count in counts.items():
            self._metrics.extraction_jobs.set(count, status=status)

    # ----- the background processor -------------------------------------------------------

    async def start_processor(self) -> ExtractionProcessor:
        if self.processor is None:
            self.processor = ExtractionProcessor(self)
            await self.processor.start()
        return self.processor

    async def stop_processor(self) -> None:
        processor, self.processor = self.processor, None
        if processor is not None:
            await processor.stop()


class ExtractionProcessor:
    """Claims pending jobs and runs up to EXTRACTION_MAX_CONCURRENT of them at once."""

    def __init__(self, service: ExtractionService) -> None:
        self.service = service
        self.owner = service.new_owner()
        self.max_concurrent = service.settings.extraction_max_concurrent
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.service.recover()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        log.info(
            "extraction processor started owner=%s concurrency=%s",
            self.owner,
            self.max_concurrent,
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=THREAD_GRACE_SECONDS + 5)
        self.service.retire_owner(self.owner)
        log.info("extraction processor stopped owner=%s", self.owner)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                while len(self._tasks) < self.max_concurrent:
                    job = await self.service.claim_next(self.owner)
                    if job is None:
                        break
                    task = asyncio.get_running_loop().create_task(self._run(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                log.exception("extraction processor could not claim a job")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)

    async def _run(self, job: Extraction) -> None:
        await self.service.process(job, self.owner)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("extraction task failed", exc_info=task.exception())
        self._wake.set()
