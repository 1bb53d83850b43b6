"""The normalization worker: normalizes the sounds nobody normalized yet, in the background.

A sound needs normalizing when it is not normalized and no attempt failed: it was added with
NORMALIZE_ON_ADD=false or `scan --no-normalize`, its file changed, or whoever was normalizing
it died. Any number of workers (the bot process runs one; `soundboard normalize --worker`
runs more, on any machine sharing the database and the sound files) claim such sounds with a
lease (owner host/pid/random, expiry NORMALIZE_LEASE_SECONDS ahead), renewed while they work.
A claim takes up to as many sounds as the worker has free slots (default: the CPU count) in one
transaction; see `core.repositories.sounds` for how claimers are kept apart on each database.
The outcome is stored only while the lease is still ours, so a sound is never recorded twice;
a worker that dies leaves leases that expire, and another worker takes those sounds. A failure
is recorded in `normalize_error` and the sound is not claimed again (`soundboard normalize`
retries failed sounds, `--force` redoes anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from core.db import Database
from core.models import Sound
from core.repositories import sounds as repo
from core.services.normalizer import NormalizeOutcome
from core.services.sounds import SoundService, normalize_owner_id

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NormalizeWorker:
    """Claims sounds that need normalizing and normalizes up to `concurrency` at once."""

    def __init__(
        self,
        db: Database,
        sounds: SoundService,
        *,
        concurrency: int | None = None,
        poll_seconds: float = POLL_SECONDS,
        one_pass: bool = False,
        owner: str | None = None,
        on_outcome: Callable[[NormalizeOutcome], None] | None = None,
    ) -> None:
        self._db = db
        self.sounds = sounds
        self.lease_seconds = sounds.normalizer.settings.normalize_lease_seconds
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self.poll_seconds = poll_seconds
        self.one_pass = one_pass
        self.owner = owner or normalize_owner_id()
        self.on_outcome = on_outcome
        # Finished normalization runs per sound id (stored or not), and the outcomes stored.
        self.runs: Counter[int] = Counter()
        self.stored: list[int] = []
        self.failed: list[int] = []
        self._running: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._stopping = False

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def started(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self.started:
            return
        self._stopping = False
        await self.recover()
        self._unlisten = self.sounds.add_pending_listener(self.wake)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        log.info(
            "normalize worker started owner=%s concurrency=%s poll_seconds=%s",
            self.owner,
            self.concurrency,
            self.poll_seconds,
        )

    async def stop(self) -> None:
        """Stop claiming, cancel the sounds in progress (their leases are handed back)."""
        if self._loop_task is None:
            return
        self._stopping = True
        self._wake.set()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
        log.info(
            "normalize worker stopped owner=%s stored=%s failed=%s",
            self.owner,
            len(self.stored),
            len(self.failed),
        )

    async def wait(self) -> None:
        """Run until cancelled or stopped (the CLI's `--worker` mode)."""
        if self._loop_task is None:
            await self.start()
        assert self._loop_task is not None
        await asyncio.shield(self._loop_task)

    async def recover(self) -> None:
        """Expire the leases of dead workers on this machine, so a restart does not wait for
        them to run out. Leases of other machines are left to expire."""
        host = socket.gethostname()[:60]
        async with self._db.session() as session:
            leases = await repo.normalize_leases(session)
        for sound_id, owner in leases:
            parts = owner.split("/")
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid() or _pid_alive(pid):
                continue  # this process's own work, or a live process on this machine
            async with self._db.transaction() as session:
                expired = await repo.expire_normalize_lease(session, sound_id=sound_id, owner=owner)
            if expired:
                log.info(
                    "normalize lease of dead worker expired sound=%s owner=%s", sound_id, owner
                )

    async def claim(self) -> list[Sound]:
        """Claim as many sounds as there are free slots and start normalizing them."""
        free = self.concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return []
        async with self._db.session() as session:
            # A read first: an idle poll never takes SQLite's write lock.
            if not await repo.any_needs_normalizing(session):
                return []
        async with self._db.transaction() as session:
            claimed = await repo.claim_for_normalizing(
                session, owner=self.owner, limit=free, lease_seconds=self.lease_seconds
            )
        started: list[Sound] = []
        for sound in claimed:
            sound_id = sound.id or 0
            if sound_id in self._running:
                continue  # our own lease had run out and we took it again: already in hand
            task = asyncio.get_running_loop().create_task(self._normalize(sound))
            self._running[sound_id] = task
            task.add_done_callback(self._done(sound_id))
            started.append(sound)
        if started:
            log.info(
                "normalize worker claimed owner=%s sounds=%s",
                self.owner,
                [s.id for s in started],
            )
        return started

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.claim()
            except Exception:
                log.exception("normalize worker could not claim sounds owner=%s", self.owner)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    async def _normalize(self, sound: Sound) -> None:
        outcomes = await self.sounds.normalize_claimed([sound], self.owner, one_pass=self.one_pass)
        for outcome in outcomes:
            self.runs[outcome.sound_id] += 1
            if outcome.sound is not None:
                (self.stored if outcome.ok else self.failed).append(outcome.sound_id)
            log.info(
                "normalize worker finished sound=%s name=%r owner=%s stored=%s error=%s",
                outcome.sound_id,
                outcome.name,
                self.owner,
                outcome.sound is not None,
                outcome.error,
            )
            if self.on_outcome is not None:
                try:
                    self.on_outcome(outcome)
                except Exception:
                    log.exception("normalize worker outcome callback failed")

    def _done(self, sound_id: int) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._running.pop(sound_id, None)
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "normalize worker task failed sound=%s owner=%s",
                    sound_id,
                    self.owner,
                    exc_info=task.exception(),
                )
            self._wake.set()  # a slot is free

        return done
