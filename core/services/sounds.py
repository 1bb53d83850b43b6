"""The sound library: adding, finding, renaming, tagging, deleting and normalizing sounds."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from core import audio
from core.config import Settings
from core.db import Database
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Sound, SoundPlayed, SoundType, utcnow
from core.repositories import guilds
from core.repositories import sounds as repo
from core.repositories.base import Page
from core.services.normalizer import NormalizeOutcome, Normalizer
from core.storage import SoundStorage

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
MAX_TAGS = 10
MAX_TAG_LENGTH = 32
AUTOCOMPLETE_LIMIT = 25
SOUND_CACHE_SECONDS = 5.0
_AUTOCOMPLETE_TTL = 30.0
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# While another worker holds a sound we were asked to normalize, look again this often.
BUSY_POLL_SECONDS = 0.5


def normalize_owner_id() -> str:
    """A lease owner: host/pid/random, at most 100 characters (the column's size)."""
    return f"{socket.gethostname()[:60]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def human_size(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    return f"{round(size / 1000)} KB"


def clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidInput("A sound needs a name.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidInput(f"Sound names can be at most {MAX_NAME_LENGTH} characters.")
    if any(ord(ch) < 32 for ch in cleaned):
        raise InvalidInput("Sound names cannot contain control characters.")
    return cleaned


def clean_tags(tags: Sequence[str] | str | None) -> list[str]:
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    cleaned = sorted({t.strip().lower() for t in items if t.strip()})
    if len(cleaned) > MAX_TAGS:
        raise InvalidInput(f"A sound can have at most {MAX_TAGS} tags.")
    for tag in cleaned:
        if len(tag) > MAX_TAG_LENGTH or not _TAG_RE.match(tag):
            raise InvalidInput(
                f"Tag {tag[:40]!r} is not valid: use up to {MAX_TAG_LENGTH} letters, digits, "
                "'-' or '_'."
            )
    return cleaned


@dataclass
class AddResult:
    sound: Sound
    created: bool
    message: str
    normalize_error: str | None = None


@dataclass
class SoundView:
    """A sound with its tags and absolute file paths, for listings and JSON."""

    sound: Sound
    tags: list[str] = field(default_factory=list)
    original_path: Path | None = None
    normalized_path: Path | None = None

    def as_dict(self) -> dict[str, object]:
        s = self.sound
        return {
            "id": s.id,
            "name": s.name,
            "guild": s.guild_id,
            "type": s.sound_type.value,
            "duration_ms": s.duration_ms,
            "size": s.size_bytes,
            "hash": s.file_hash,
            "is_normalized": s.is_normalized,
            "is_silent": s.is_silent,
            "play_count": s.play_count,
            "tags": self.tags,
            "original_path": str(self.original_path) if self.original_path else None,
            "normalized_path": str(self.normalized_path) if self.normalized_path else None,
        }


@dataclass
class Stats:
    top_sounds: list[tuple[str, int]]
    top_members: list[tuple[int | None, str, int]]


def rank_names(
    names: Sequence[tuple[int, str]], query: str, limit: int = AUTOCOMPLETE_LIMIT
) -> list[tuple[int, str]]:
    """Prefix matches first, then substrings, then close fuzzy matches."""
    q = query.strip().lower()
    if not q:
        return list(names[:limit])
    prefix, inside, fuzzy = [], [], []
    for ident, name in names:
        low = name.lower()
        if low.startswith(q):
            prefix.append((ident, name))
        elif q in low:
            inside.append((ident, name))
        else:
            score = difflib.SequenceMatcher(None, q, low[: len(q) + 3]).ratio()
            if score >= 0.6:
                fuzzy.append((score, ident, name))
    fuzzy.sort(key=lambda item: -item[0])
    ranked = prefix + inside + [(i, n) for _, i, n in fuzzy]
    return ranked[:limit]


class SoundService:
    def __init__(self, db: Database, settings: Settings, storage: SoundStorage) -> None:
        self._db = db
        self._settings = settings
        self.storage = storage
        self.normalizer = Normalizer(settings)
        self._names: dict[int, tuple[float, list[tuple[int, str]]]] = {}
        self._recent_sounds: dict[int, tuple[float, Sound]] = {}
        # (guild, typed name) -> sound id, for plays by name (a soundboard's favourites are
        # played again and again); same lifetime and invalidation as _recent_sounds.
        self._by_name: dict[tuple[int, str], tuple[float, int]] = {}
        self._pending_listeners: list[Callable[[], None]] = []

    # ----- adding -------------------------------------------------------------------------

    async def add_file(
        self,
        path: Path,
        *,
        name: str,
        guild_id: int | None = None,
        sound_type: SoundType = SoundType.SDB,
        tags: Sequence[str] | str | None = None,
        uploader_id: int | None = None,
        normalize: bool | None = None,
    ) -> AddResult:
        """Check, store and (by default) normalize a new sound. Bad input raises InvalidInput
        and leaves nothing behind; the same audio twice returns the existing sound."""
        name = clean_name(name)
        tag_list = clean_tags(tags)
        info, digest, size = await self.inspect(path)
        async with self._db.session() as session:
            existing = await repo.get_by_hash(session, guild_id=guild_id, digest=digest)
            if existing is not None:
                return AddResult(
                    existing, False, f"This audio is already in the library as '{existing.name}'."
                )
            if await repo.get_by_name(session, guild_id=guild_id, name=name) is not None:
                raise Conflict(f"A sound called '{name}' already exists here.")
        relname = await asyncio.to_thread(
            self.storage.store_original,
            path,
            sound_type=sound_type,
            guild_id=guild_id,
            name=name,
            digest=digest,
        )
        stored = self.storage.original_path(sound_type, relname)
        inline = normalize if normalize is not None else self._settings.normalize_on_add
        # Normalizing here: the row is born leased to us, so no worker takes it meanwhile.
        owner = normalize_owner_id() if inline else None
        try:
            sound = await self._insert(
                guild_id=guild_id,
                name=name,
                sound_type=sound_type,
                relname=relname,
                duration_ms=info.duration_ms,
                size=size,
                digest=digest,
                mtime_ns=stored.stat().st_mtime_ns,
                uploader_id=uploader_id,
                tags=tag_list,
                lease_owner=owner,
            )
        except IntegrityError:
            await self._discard_unreferenced(sound_type, relname)
            async with self._db.session() as session:
                existing = await repo.get_by_hash(session, guild_id=guild_id, digest=digest)
            if existing is not None:
                return AddResult(
                    existing, False, f"This audio is already in the library as '{existing.name}'."
                )
            raise Conflict(f"A sound called '{name}' already exists here.") from None
        self._forget_names(guild_id)
        log.info(
            "sound added sound=%s guild=%s name=%r duration_ms=%s",
            sound.id,
            guild_id,
            name,
            info.duration_ms,
        )
        result = AddResult(sound, True, f"Added '{name}' ({info.duration_ms / 1000:.1f} s).")
        if owner is not None:
            outcome = (await self.normalize_claimed([sound], owner))[0]
            result.sound = outcome.sound or sound
            result.normalize_error = outcome.error
        else:
            self._announce_pending()
        return result

    async def inspect(self, path: Path) -> tuple[audio.AudioInfo, str, int]:
        """Limits before decoding (size, declared duration), the decode itself, limits after."""
        try:
            size = await asyncio.to_thread(audio.get_file_size, path)
        except FileNotFoundError:
            raise InvalidInput("The file does not exist.") from None
        if size > self._settings.sound_max_bytes:
            raise InvalidInput(
                f"The file is too big ({human_size(size)}; the limit is "
                f"{human_size(self._settings.sound_max_bytes)})."
            )
        max_ms = self._settings.sound_max_duration_ms
        declared = await asyncio.to_thread(audio.get_declared_duration, path)
        if declared is not None and declared > max_ms:
            raise InvalidInput(self._too_long(declared))
        try:
            info = await audio.probe_audio_async(path)
        except audio.InvalidAudioError as exc:
            raise InvalidInput(f"That file is not usable audio: {exc.reason}.") from None
        if info.duration_ms > max_ms:
            raise InvalidInput(self._too_long(info.duration_ms))
        digest = await audio.get_file_hash_async(path)
        return info, digest, size

    def _too_long(self, duration_ms: int) -> str:
        limit = self._settings.sound_max_duration_ms / 1000
        return (
            f"The sound is too long ({duration_ms / 60000:.1f} min; the limit is "
            f"{limit / 60:.0f} min)."
        )

    async def _insert(
        self,
        *,
        guild_id: int | None,
        name: str,
        sound_type: SoundType,
        relname: str,
        duration_ms: int,
        size: int,
        digest: str,
        mtime_ns: int,
        uploader_id: int | None,
        tags: list[str],
        lease_owner: str | None = None,
    ) -> Sound:
        async with self._db.transaction() as session:
            if guild_id is not None:
                await guilds.ensure(session, guild_id=guild_id)
            sound = Sound(
                guild_id=guild_id,
                name=name,
                sound_type=sound_type,
                original_filename=relname,
                duration_ms=duration_ms,
                size_bytes=size,
                file_hash=digest,
                file_mtime_ns=mtime_ns,
                uploader_id=uploader_id,
            )
            session.add(sound)
            await session.flush()
            if tags:
                await repo.set_tags(session, sound_id=sound.id or 0, tags=tags)
            if lease_owner is not None:
                leased = await repo.claim_by_ids(
                    session,
                    ids=[sound.id or 0],
                    owner=lease_owner,
                    lease_seconds=self._settings.normalize_lease_seconds,
                    unnormalized_only=True,
                )
                sound = leased[0] if leased else sound
        return sound

    async def _discard_unreferenced(self, sound_type: SoundType, relname: str) -> None:
        async with self._db.session() as session:
            still_used = await repo.get_by_original(session, sound_type=sound_type, relname=relname)
        if still_used is None:
            self.storage.remove(self.storage.original_path(sound_type, relname))

    # ----- reading ------------------------------------------------------------------------

    async def get(self, sound_id: int) -> Sound:
        async with self._db.session() as session:
            sound = await repo.get(session, sound_id=sound_id)
        if sound is None:
            raise NotFound("That sound does not exist (any more).")
        return sound

    async def _recent(self, sound_id: int) -> Sound | None:
        """A sound by id for the play path, cached for a few seconds. Changes made in this
        process drop the entry; another process's rename shows within SOUND_CACHE_SECONDS (a
        deleted sound's missing file is caught before any charge)."""
        cached = self._recent_sounds.get(sound_id)
        if cached is not None and time.monotonic() - cached[0] < SOUND_CACHE_SECONDS:
            return cached[1]
        async with self._db.session() as session:
            sound = await repo.get(session, sound_id=sound_id)
        if sound is not None:
            if len(self._recent_sounds) > 10_000:
                self._recent_sounds.clear()
            self._recent_sounds[sound_id] = (time.monotonic(), sound)
        return sound

    async def get_for_guild(self, sound_id: int, guild_id: int) -> Sound:
        """A sound playable in `guild_id`: its own or the global library's."""
        sound = await self.get(sound_id)
        if sound.guild_id not in (None, guild_id):
            raise NotFound("That sound does not exist in this server.")
        return sound

    async def find(self, guild_id: int, name_or_id: str) -> Sound:
        """Resolve what a user typed (or autocomplete sent: the id) to a sound of this guild."""
        value = name_or_id.strip()
        if value.isdigit():
            sound = await self._recent(int(value))
            if sound is not None and sound.guild_id in (None, guild_id):
                return sound
        known = self._by_name.get((guild_id, value))
        if known is not None and time.monotonic() - known[0] < SOUND_CACHE_SECONDS:
            sound = await self._recent(known[1])
            if sound is not None and sound.name == value and sound.guild_id in (None, guild_id):
                return sound
        async with self._db.session() as session:
            sound = await repo.get_by_name(session, guild_id=guild_id, name=value)
            if sound is None:
                sound = await repo.get_by_name(session, guild_id=None, name=value)
        if sound is None:
            raise NotFound(f"No sound called '{value[:100]}' here.")
        if len(self._by_name) > 10_000:
            self._by_name.clear()
        self._by_name[(guild_id, value)] = (time.monotonic(), sound.id or 0)
        return sound

    async def views(self, items: Sequence[Sound]) -> list[SoundView]:
        async with self._db.session() as session:
            tags = await repo.tags_of(session, sound_ids=[s.id or 0 for s in items])
        return [
            SoundView(
                sound=s,
                tags=tags.get(s.id or 0, []),
                original_path=self.storage.original_path(s.sound_type, s.original_filename),
                normalized_path=self.storage.normalized_path(s.sound_type, s.normalized_filename)
                if s.normalized_filename
                else None,
            )
            for s in items
        ]

    async def list_page(
        self,
        *,
        guild_id: int | None,
        include_global: bool = True,
        search: str | None = None,
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 25,
    ) -> Page[Sound]:
        async with self._db.session() as session:
            return await repo.list_page(
                session,
                guild_id=guild_id,
                include_global=include_global,
                search=search,
                tag=tag,
                cursor=cursor,
                limit=limit,
            )

    async def list_all(
        self, *, guild_id: int | None = None, all_guilds: bool = False
    ) -> list[Sound]:
        async with self._db.session() as session:
            return await repo.list_filtered(session, guild_id=guild_id, all_guilds=all_guilds)

    async def autocomplete(
        self, guild_id: int, query: str, *, tag: str | None = None
    ) -> list[tuple[int, str]]:
        """Up to 25 (id, name) pairs; names are cached briefly so typing stays fast."""
        if tag:
            async with self._db.session() as session:
                names = await repo.names_for_autocomplete(session, guild_id=guild_id, tag=tag)
            return rank_names(names, query)
        cached = self._names.get(guild_id)
        if cached is None or time.monotonic() - cached[0] > _AUTOCOMPLETE_TTL:
            async with self._db.session() as session:
                names = await repo.names_for_autocomplete(session, guild_id=guild_id)
            cached = (time.monotonic(), names)
            self._names[guild_id] = cached
        return rank_names(cached[1], query)

    async def names(self, guild_id: int, *, tag: str | None = None) -> list[tuple[int, str]]:
        """Every (id, name) playable in `guild_id` (its own and the global library), by name."""
        async with self._db.session() as session:
            return await repo.names_for_autocomplete(session, guild_id=guild_id, tag=tag)

    def _forget_sound(self, sound_id: int | None) -> None:
        self._recent_sounds.pop(sound_id or 0, None)
        # Names change rarely: forget them all rather than index them by sound.
        self._by_name.clear()

    def _forget_names(self, guild_id: int | None) -> None:
        self._by_name.clear()
        if guild_id is None:
            self._names.clear()
        else:
            self._names.pop(guild_id, None)

    async def tags(self, guild_id: int) -> list[str]:
        async with self._db.session() as session:
            return await repo.all_tags(session, guild_id=guild_id)

    async def random(self, guild_id: int, tag: str | None = None) -> Sound:
        async with self._db.session() as session:
            sound = await repo.random_one(session, guild_id=guild_id, tag=tag)
        if sound is None:
            raise NotFound(
                "There are no sounds here yet."
                if not tag
                else f"No sound here has the tag '{tag[:32]}'."
            )
        return sound

    def playback_file(self, sound: Sound) -> tuple[Path, bool]:
        """The file to stream and whether it is the Ogg Opus playback file."""
        if sound.is_normalized and sound.normalized_filename:
            path = self.storage.normalized_path(sound.sound_type, sound.normalized_filename)
            return path, path.suffix == ".ogg"
        return self.storage.original_path(sound.sound_type, sound.original_filename), False

    # ----- changing -----------------------------------------------------------------------

    async def rename(self, sound_id: int, new_name: str) -> Sound:
        name = clean_name(new_name)
        try:
            async with self._db.transaction() as session:
                sound = await repo.get(session, sound_id=sound_id)
                if sound is None:
                    raise NotFound("That sound does not exist (any more).")
                old = sound.name
                sound.name = name
                session.add(sound)
                await session.flush()
        except IntegrityError:
            raise Conflict(f"A sound called '{name}' already exists here.") from None
        self._forget_names(sound.guild_id)
        self._forget_sound(sound_id)
        log.info("sound renamed sound=%s from=%r to=%r", sound_id, old, name)
        return sound

    async def set_tags(self, sound_id: int, tags: Sequence[str] | str) -> list[str]:
        cleaned = clean_tags(tags)
        async with self._db.transaction() as session:
            if await repo.get(session, sound_id=sound_id) is None:
                raise NotFound("That sound does not exist (any more).")
            await repo.set_tags(session, sound_id=sound_id, tags=cleaned)
        return cleaned

    async def delete(self, sound_id: int) -> Sound:
        """Remove the row and its files; play history and ledger rows keep the name."""
        async with self._db.transaction() as session:
            sound = await repo.get(session, sound_id=sound_id)
            if sound is None:
                raise NotFound("That sound does not exist (any more).")
            await session.delete(sound)
        self.storage.remove(self.storage.original_path(sound.sound_type, sound.original_filename))
        if sound.normalized_filename:
            self.storage.remove(
                self.storage.normalized_path(sound.sound_type, sound.normalized_filename)
            )
        self._forget_names(sound.guild_id)
        self._forget_sound(sound_id)
        log.info("sound deleted sound=%s name=%r", sound_id, sound.name)
        return sound

    async def record_play(
        self, sound: Sound, *, user_id: int | None, guild_id: int | None, channel_id: int | None
    ) -> SoundPlayed:
        # Inline on SQLite: 500 plays starting at once left 500 of these transactions hopping
        # through aiosqlite's threads while the audio played, and those threads took the GIL
        # from the pacer on the event loop.
        row = await repo.record_play_inline(
            self._db, sound=sound, user_id=user_id, guild_id=guild_id, channel_id=channel_id
        )
        if row is not None:
            return row
        async with self._db.transaction() as session:
            return await repo.record_play(
                session, sound=sound, user_id=user_id, guild_id=guild_id, channel_id=channel_id
            )

    async def has_used_guild(self, *, user_id: int, guild_id: int) -> bool:
        async with self._db.session() as session:
            return await repo.has_used_guild(session, user_id=user_id, guild_id=guild_id)

    async def stats(self, guild_id: int, *, days: int = 7) -> Stats:
        since = utcnow() - timedelta(days=days)
        async with self._db.session() as session:
            return Stats(
                top_sounds=await repo.top_sounds(session, guild_id=guild_id, since=since),
                top_members=await repo.top_members(session, guild_id=guild_id, since=since),
            )

    # ----- normalizing --------------------------------------------------------------------

    async def normalize(
        self, sound_id: int, *, force: bool = False, one_pass: bool = False
    ) -> NormalizeOutcome:
        sound = await self.get(sound_id)
        return (await self.normalize_many([sound], force=force, one_pass=one_pass))[0]

    async def normalize_selection(
        self,
        *,
        sound_type: SoundType | None = None,
        ids: Sequence[int] | None = None,
        force: bool = False,
        one_pass: bool = False,
        progress: Callable[[int, int, NormalizeOutcome], None] | None = None,
    ) -> list[NormalizeOutcome]:
        async with self._db.session() as session:
            selected = await repo.list_filtered(
                session,
                all_guilds=True,
                sound_type=sound_type,
                ids=ids,
                only_unnormalized=not force,
            )
        if ids is not None and not force:
            async with self._db.session() as session:
                selected = await repo.list_filtered(session, all_guilds=True, ids=ids)
        return await self.normalize_many(
            selected, force=force, one_pass=one_pass, progress=progress
        )

    async def normalize_many(
        self,
        selected: Sequence[Sound],
        *,
        force: bool = False,
        one_pass: bool = False,
        progress: Callable[[int, int, NormalizeOutcome], None] | None = None,
    ) -> list[NormalizeOutcome]:
        """Normalize these sounds here and now (the CLI, /admin, the scanner), under leases so
        no worker does the same sound at the same time. Sounds normalized when selected are
        redone only with `force`; one normalized by someone else since is left alone. While
        another worker holds a sound we wait for it and report what it ended with."""
        owner = normalize_owner_id()
        order: list[int] = []
        for s in selected:
            if s.id is not None and s.id not in order:
                order.append(s.id)
        redo = {s.id for s in selected if force and s.is_normalized}
        names = {s.id: s.name for s in selected}
        outcomes: dict[int, NormalizeOutcome] = {}
        waited: set[int] = set()
        todo = list(order)
        while todo:
            async with self._db.transaction() as session:
                lease = self._settings.normalize_lease_seconds
                claimed = await repo.claim_by_ids(
                    session,
                    ids=[i for i in todo if i in redo and i not in waited],
                    owner=owner,
                    lease_seconds=lease,
                    unnormalized_only=False,
                )
                claimed += await repo.claim_by_ids(
                    session,
                    ids=[i for i in todo if i not in redo and i not in waited],
                    owner=owner,
                    lease_seconds=lease,
                    unnormalized_only=True,
                )
                # One we waited for: another worker finished (or failed) it; take its outcome.
                claimed += await repo.claim_by_ids(
                    session,
                    ids=[i for i in todo if i in waited],
                    owner=owner,
                    lease_seconds=lease,
                    unnormalized_only=True,
                    needs_normalizing_only=True,
                )
                got = {s.id for s in claimed}
                rest = [i for i in todo if i not in got]
                busy = await repo.held_by_others(session, ids=rest, owner=owner)
                settled = await repo.get_many(session, ids=[i for i in rest if i not in busy])
            for sound in settled:
                error = sound.normalize_error if sound.id in waited else None
                outcomes[sound.id or 0] = NormalizeOutcome(
                    sound.id or 0, sound.name, error=error, sound=sound
                )
            if claimed:
                for outcome in await self.normalize_claimed(
                    claimed, owner, one_pass=one_pass, progress=progress
                ):
                    outcomes[outcome.sound_id] = outcome
            if busy:
                log.info("normalize waiting for other workers sounds=%s", busy)
                waited.update(busy)
                await asyncio.sleep(BUSY_POLL_SECONDS)
            todo = busy
        for ident in order:
            if ident not in outcomes:  # deleted before we got to it
                outcomes[ident] = NormalizeOutcome(
                    ident, names.get(ident, ""), error="the sound was deleted meanwhile"
                )
        return [outcomes[i] for i in order]

    async def normalize_claimed(
        self,
        claimed: Sequence[Sound],
        owner: str,
        *,
        one_pass: bool = False,
        progress: Callable[[int, int, NormalizeOutcome], None] | None = None,
    ) -> list[NormalizeOutcome]:
        """Normalize sounds `owner` holds leases on: the leases are renewed while the work
        runs, each outcome is stored as its sound finishes if the lease is still ours (then
        the lease is cleared), and on cancellation the unfinished sounds are handed back."""
        hashes = {s.id or 0: s.file_hash for s in claimed}
        active = set(hashes)
        stores: list[asyncio.Task[None]] = []

        def on_item(done: int, total: int, outcome: NormalizeOutcome) -> None:
            active.discard(outcome.sound_id)
            task = asyncio.get_running_loop().create_task(
                self._store_safely(outcome, owner=owner, file_hash=hashes[outcome.sound_id])
            )
            stores.append(task)
            if progress is not None:
                progress(done, total, outcome)

        heartbeat = asyncio.get_running_loop().create_task(self._renew_leases(active, owner))
        try:
            outcomes = await self.normalizer.run(
                [
                    (
                        s,
                        self.storage.original_path(s.sound_type, s.original_filename),
                        self.storage.normalized_path(
                            s.sound_type,
                            self.storage.normalized_name_for(
                                s.original_filename, self.normalizer.extension
                            ),
                        ),
                    )
                    for s in claimed
                ],
                force=True,
                one_pass=one_pass,
                progress=on_item,
            )
        except BaseException:
            await asyncio.shield(self._release_leases(sorted(active), owner))
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if stores:  # finished sounds are recorded even when we are being cancelled
                await asyncio.shield(asyncio.gather(*stores))
        return outcomes

    async def _renew_leases(self, active: set[int], owner: str) -> None:
        lease = self._settings.normalize_lease_seconds
        while True:
            await asyncio.sleep(max(0.05, lease / 3))
            ids = sorted(active)
            if not ids:
                continue
            try:
                async with self._db.transaction() as session:
                    held = await repo.renew_normalize_leases(
                        session, ids=ids, owner=owner, lease_seconds=lease
                    )
            except Exception:
                log.warning("normalize lease renewal failed owner=%s", owner, exc_info=True)
                continue
            if held < len(ids):
                log.warning("normalize leases lost owner=%s sounds=%s held=%s", owner, ids, held)

    async def _release_leases(self, ids: list[int], owner: str) -> None:
        if not ids:
            return
        try:
            async with self._db.transaction() as session:
                released = await repo.release_normalize_leases(session, ids=ids, owner=owner)
            log.info("normalize leases released owner=%s sounds=%s count=%s", owner, ids, released)
        except Exception:
            log.warning("normalize leases not released owner=%s", owner, exc_info=True)
        self._announce_pending()

    def add_pending_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback()` runs when this process leaves a sound for the normalization workers
        (added without normalizing, or handed back unfinished). Returns the unsubscriber."""
        self._pending_listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._pending_listeners.remove(callback)

        return remove

    def _announce_pending(self) -> None:
        for callback in list(self._pending_listeners):
            try:
                callback()
            except Exception:
                log.exception("normalize listener failed")

    async def _store_safely(self, outcome: NormalizeOutcome, *, owner: str, file_hash: str) -> None:
        try:
            await self._store_outcome(outcome, owner=owner, file_hash=file_hash)
        except Exception:
            # The lease stays ours until it expires; then the sound is claimed and done again.
            log.exception("normalize outcome not stored sound=%s owner=%s", outcome.sound_id, owner)
            outcome.result = None
            outcome.error = "the result could not be recorded; it will be retried"

    async def _store_outcome(
        self, outcome: NormalizeOutcome, *, owner: str, file_hash: str
    ) -> None:
        """Write the outcome if our lease still holds and the file is the one we normalized."""
        async with self._db.transaction() as session:
            ours = await repo.finish_normalize_lease(
                session, sound_id=outcome.sound_id, owner=owner, file_hash=file_hash
            )
            sound = await repo.get(session, sound_id=outcome.sound_id)
            if sound is None:  # deleted while we worked: drop the orphan file
                if outcome.output_path is not None:
                    self.storage.remove(outcome.output_path)
                outcome.error = outcome.error or "the sound was deleted meanwhile"
                return
            if not ours:
                if sound.normalize_lease_owner == owner:  # the file changed while we worked
                    await repo.finish_normalize_lease(
                        session, sound_id=outcome.sound_id, owner=owner
                    )
                    outcome.error = "the file changed meanwhile; it will be normalized again"
                else:
                    outcome.error = "another worker took this sound over"
                log.warning(
                    "normalize outcome dropped sound=%s owner=%s reason=%s",
                    outcome.sound_id,
                    owner,
                    outcome.error,
                )
                outcome.result = None
                return
            if outcome.error is not None:
                sound.normalize_error = outcome.error[:500]
            elif outcome.result is not None and outcome.output_path is not None:
                old = sound.normalized_filename
                sound.normalized_filename = self.storage.normalized_name_for(
                    sound.original_filename, self.normalizer.extension
                )
                sound.normalized_duration_ms = outcome.result.duration_ms
                sound.normalized_size_bytes = outcome.result.size
                sound.normalized_hash = outcome.result.sha256
                sound.is_normalized = True
                sound.is_silent = outcome.result.silent
                sound.normalize_error = None
                if old and old != sound.normalized_filename:
                    self.storage.remove(self.storage.normalized_path(sound.sound_type, old))
            session.add(sound)
            await session.flush()
            outcome.sound = sound
        self._forget_sound(outcome.sound_id)


def file_mtime_ns(path: Path) -> int:
    return os.stat(path).st_mtime_ns
