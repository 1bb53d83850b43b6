"""Brings the database in line with the originals folders: adds, updates and removes sounds.

A rescan of an unchanged library compares size and modification time only: it costs about a
directory walk, with no hashing or decoding.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import audio
from core.db import Database
from core.errors import InvalidInput
from core.models import Sound, SoundType
from core.repositories import guilds
from core.repositories import sounds as repo
from core.services.sounds import MAX_NAME_LENGTH, SoundService
from core.storage import AUDIO_EXTENSIONS, TEMP_PREFIX

log = logging.getLogger(__name__)

_GUILD_FOLDER = re.compile(r"^g(\d{1,20})$")


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    normalize_failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "unchanged": self.unchanged,
            "normalize_failed": [{"file": f, "reason": r} for f, r in self.normalize_failed],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Found:
    sound_type: SoundType
    relname: str
    path: Path
    size: int
    mtime_ns: int


def walk_originals(root: Path, thumbnails: Path) -> list[_Found]:
    found: list[_Found] = []
    for sound_type in SoundType:
        base = root / sound_type.folder
        stack = [base]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if Path(entry.path) != thumbnails:
                        stack.append(Path(entry.path))
                    continue
                if os.path.splitext(entry.name)[1].lower() not in AUDIO_EXTENSIONS:
                    continue
                stat = entry.stat()
                found.append(
                    _Found(
                        sound_type,
                        Path(entry.path).relative_to(base).as_posix(),
                        Path(entry.path),
                        stat.st_size,
                        stat.st_mtime_ns,
                    )
                )
    return found


class Scanner:
    def __init__(self, db: Database, sounds: SoundService) -> None:
        self._db = db
        self._sounds = sounds

    async def scan(
        self, *, guild_id: int | None = None, normalize: bool | None = None
    ) -> ScanReport:
        """`guild_id` is the library new files join, unless they sit in a `g<guild id>` folder."""
        started = time.perf_counter()
        report = ScanReport()
        storage = self._sounds.storage
        storage.ensure_layout()
        found = await asyncio.to_thread(walk_originals, storage.originals, storage.thumbnails)
        async with self._db.session() as session:
            rows = await repo.all_of_types(session, types=list(SoundType))
        known = {(r.sound_type, r.original_filename): r for r in rows}
        on_disk = {(f.sound_type, f.relname) for f in found}

        changed: list[tuple[_Found, Sound | None]] = []
        for item in found:
            row = known.get((item.sound_type, item.relname))
            if (
                row is not None
                and row.size_bytes == item.size
                and row.file_mtime_ns == item.mtime_ns
            ):
                report.unchanged += 1
            else:
                changed.append((item, row))

        # Decoding and hashing run in parallel; database changes follow in path order, so the
        # outcome (which of two identical files is kept, say) never depends on timing.
        limit = asyncio.Semaphore(os.cpu_count() or 2)

        async def inspect(item: _Found) -> tuple[audio.AudioInfo, str, int] | str:
            async with limit:
                try:
                    return await self._sounds.inspect(item.path)
                except InvalidInput as exc:
                    return str(exc)

        changed.sort(key=lambda pair: (pair[0].sound_type.value, pair[0].relname))
        inspected = await asyncio.gather(*(inspect(item) for item, _ in changed))
        touched: list[Sound] = []
        for (item, row), facts in zip(changed, inspected, strict=True):
            label = f"{item.sound_type.folder}/{item.relname}"
            if isinstance(facts, str):
                report.skipped.append((label, facts))
                continue
            sound = await self._add_or_update(item, row, facts, guild_id, report)
            if sound is not None:
                touched.append(sound)

        if not found and known:
            # An empty originals tree with sounds in the database is far more likely an unmounted
            # volume than a library someone emptied: never delete everything on that evidence.
            report.skipped.append(
                (
                    str(storage.originals),
                    "no audio files found; nothing was removed (is the sound folder mounted?)",
                )
            )
            known = {}
        for key, row in known.items():
            if key not in on_disk:
                await self._remove_row(row)
                report.deleted.append(f"{row.sound_type.folder}/{row.original_filename}")

        if touched and (normalize if normalize is not None else self._sounds_normalize_on_add):
            outcomes = await self._sounds.normalize_many(touched, force=True)
            report.normalize_failed = [(o.name, o.error) for o in outcomes if o.error]
        report.seconds = time.perf_counter() - started
        log.info(
            "scan done added=%s updated=%s deleted=%s skipped=%s unchanged=%s ms=%.0f",
            len(report.added),
            len(report.updated),
            len(report.deleted),
            len(report.skipped),
            report.unchanged,
            report.seconds * 1000,
        )
        return report

    @property
    def _sounds_normalize_on_add(self) -> bool:
        return self._sounds.normalizer.settings.normalize_on_add

    async def _add_or_update(
        self,
        item: _Found,
        row: Sound | None,
        facts: tuple[audio.AudioInfo, str, int],
        guild_id: int | None,
        report: ScanReport,
    ) -> Sound | None:
        label = f"{item.sound_type.folder}/{item.relname}"
        info, digest, size = facts
        if row is not None:
            return await self._update(row, item, info.duration_ms, digest, size, label, report)
        owner = self._guild_of(item.relname, guild_id)
        name = Path(item.relname).stem.replace("_", " ").strip()[:MAX_NAME_LENGTH] or "sound"
        try:
            async with self._db.transaction() as session:
                duplicate = await repo.get_by_hash(session, guild_id=owner, digest=digest)
                if duplicate is not None:
                    report.skipped.append((label, f"same audio as '{duplicate.name}'"))
                    return None
                if owner is not None:
                    await guilds.ensure(session, guild_id=owner)
                name = await self._free_name(session, owner, name)
                sound = Sound(
                    guild_id=owner,
                    name=name,
                    sound_type=item.sound_type,
                    original_filename=item.relname,
                    duration_ms=info.duration_ms,
                    size_bytes=size,
                    file_hash=digest,
                    file_mtime_ns=item.mtime_ns,
                )
                session.add(sound)
                await session.flush()
        except IntegrityError:
            report.skipped.append((label, "added by someone else during the scan"))
            return None
        report.added.append(label)
        return sound

    async def _update(
        self,
        row: Sound,
        item: _Found,
        duration_ms: int,
        digest: str,
        size: int,
        label: str,
        report: ScanReport,
    ) -> Sound | None:
        async with self._db.transaction() as session:
            sound = await repo.get(session, sound_id=row.id or 0)
            if sound is None:
                return None
            audio_changed = sound.file_hash != digest
            sound.size_bytes, sound.file_mtime_ns = size, item.mtime_ns
            if audio_changed:
                sound.file_hash, sound.duration_ms = digest, duration_ms
                sound.is_normalized = False
                sound.normalize_error = None  # new audio: an old failure says nothing of it
            session.add(sound)
            try:
                await session.flush()
            except IntegrityError:
                report.skipped.append((label, "its new audio duplicates another sound"))
                return None
        if not audio_changed:
            report.unchanged += 1
            return None
        report.updated.append(label)
        return sound

    async def _remove_row(self, row: Sound) -> None:
        async with self._db.transaction() as session:
            sound = await repo.get(session, sound_id=row.id or 0)
            if sound is not None:
                await session.delete(sound)
        if row.normalized_filename:
            storage = self._sounds.storage
            storage.remove(storage.normalized_path(row.sound_type, row.normalized_filename))

    @staticmethod
    def _guild_of(relname: str, default: int | None) -> int | None:
        first = relname.split("/", 1)[0] if "/" in relname else ""
        match = _GUILD_FOLDER.match(first)
        if match:
            return int(match.group(1))
        if first == "global":
            return None
        return default

    @staticmethod
    async def _free_name(session: AsyncSession, guild_id: int | None, name: str) -> str:
        candidate, n = name, 1
        while await repo.get_by_name(session, guild_id=guild_id, name=candidate) is not None:
            n += 1
            suffix = f" ({n})"
            candidate = name[: MAX_NAME_LENGTH - len(suffix)] + suffix
        return candidate
