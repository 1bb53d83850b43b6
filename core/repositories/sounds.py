from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Interval,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from core.db import Database, InlineWrite
from core.models import Sound, SoundPlayed, SoundTag, SoundType, User, utcnow
from core.models.common import UTCDateTime
from core.models.sound import NEEDS_NORMALIZING_SQL
from core.repositories.base import Page, keyset_page


def _tagged(tag: str) -> ColumnElement[bool]:
    tagged = select(col(SoundTag.sound_id)).where(col(SoundTag.tag) == tag.lower())
    return col(Sound.id).in_(tagged)


def _scope(guild_id: int | None, *, include_global: bool) -> ColumnElement[bool]:
    if guild_id is None:
        return col(Sound.guild_id).is_(None)
    if include_global:
        return or_(col(Sound.guild_id) == guild_id, col(Sound.guild_id).is_(None))
    return col(Sound.guild_id) == guild_id


async def get(session: AsyncSession, *, sound_id: int) -> Sound | None:
    return await session.get(Sound, sound_id)


async def get_by_name(session: AsyncSession, *, guild_id: int | None, name: str) -> Sound | None:
    stmt = select(Sound).where(_scope(guild_id, include_global=False), col(Sound.name) == name)
    return (await session.scalars(stmt)).first()


async def get_by_hash(session: AsyncSession, *, guild_id: int | None, digest: str) -> Sound | None:
    stmt = select(Sound).where(
        _scope(guild_id, include_global=False),
        col(Sound.file_hash) == digest,
    )
    return (await session.scalars(stmt)).first()


async def get_by_original(
    session: AsyncSession, *, sound_type: SoundType, relname: str
) -> Sound | None:
    stmt = select(Sound).where(
        col(Sound.sound_type) == sound_type, col(Sound.original_filename) == relname
    )
    return (await session.scalars(stmt)).first()


async def all_of_types(session: AsyncSession, *, types: Sequence[SoundType]) -> list[Sound]:
    stmt = select(Sound).where(col(Sound.sound_type).in_(list(types))).order_by(col(Sound.id))
    return list((await session.scalars(stmt)).all())


async def list_page(
    session: AsyncSession,
    *,
    guild_id: int | None,
    include_global: bool = True,
    search: str | None = None,
    tag: str | None = None,
    cursor: str | None = None,
    limit: int = 25,
) -> Page[Sound]:
    stmt = select(Sound).where(_scope(guild_id, include_global=include_global))
    if search:
        stmt = stmt.where(func.lower(col(Sound.name)).contains(search.lower(), autoescape=True))
    if tag:
        stmt = stmt.where(_tagged(tag))
    return await keyset_page(
        session, stmt, id_column=col(Sound.id), cursor=cursor, limit=limit, descending=False
    )


async def list_filtered(
    session: AsyncSession,
    *,
    guild_id: int | None = None,
    all_guilds: bool = False,
    sound_type: SoundType | None = None,
    ids: Sequence[int] | None = None,
    only_unnormalized: bool = False,
) -> list[Sound]:
    stmt = select(Sound)
    if not all_guilds:
        stmt = stmt.where(_scope(guild_id, include_global=False))
    if sound_type is not None:
        stmt = stmt.where(col(Sound.sound_type) == sound_type)
    if ids is not None:
        stmt = stmt.where(col(Sound.id).in_(list(ids)))
    if only_unnormalized:
        stmt = stmt.where(col(Sound.is_normalized).is_(False))
    return list((await session.scalars(stmt.order_by(col(Sound.id)))).all())


async def names_for_autocomplete(
    session: AsyncSession, *, guild_id: int, tag: str | None = None
) -> list[tuple[int, str]]:
    stmt = select(col(Sound.id), col(Sound.name)).where(_scope(guild_id, include_global=True))
    if tag:
        stmt = stmt.where(_tagged(tag))
    rows = (await session.execute(stmt.order_by(col(Sound.name)))).all()
    return [(int(i or 0), str(n)) for i, n in rows]


async def random_one(session: AsyncSession, *, guild_id: int, tag: str | None) -> Sound | None:
    stmt = select(Sound).where(_scope(guild_id, include_global=True))
    if tag:
        stmt = stmt.where(_tagged(tag))
    return (await session.scalars(stmt.order_by(func.random()).limit(1))).first()


async def tags_of(session: AsyncSession, *, sound_ids: Sequence[int]) -> dict[int, list[str]]:
    if not sound_ids:
        return {}
    stmt = (
        select(SoundTag)
        .where(col(SoundTag.sound_id).in_(list(sound_ids)))
        .order_by(col(SoundTag.tag))
    )
    result: dict[int, list[str]] = {i: [] for i in sound_ids}
    for row in (await session.scalars(stmt)).all():
        result[row.sound_id].append(row.tag)
    return result


async def set_tags(session: AsyncSession, *, sound_id: int, tags: Sequence[str]) -> None:
    await session.execute(delete(SoundTag).where(col(SoundTag.sound_id) == sound_id))
    for tag in sorted(set(tags)):
        session.add(SoundTag(sound_id=sound_id, tag=tag))
    await session.flush()


async def all_tags(session: AsyncSession, *, guild_id: int) -> list[str]:
    stmt = (
        select(col(SoundTag.tag))
        .join(Sound, col(Sound.id) == col(SoundTag.sound_id))
        .where(_scope(guild_id, include_global=True))
        .group_by(col(SoundTag.tag))
        .order_by(col(SoundTag.tag))
    )
    return [str(t) for t in (await session.scalars(stmt)).all()]


async def record_play(
    session: AsyncSession,
    *,
    sound: Sound,
    user_id: int | None,
    guild_id: int | None,
    channel_id: int | None,
) -> SoundPlayed:
    await session.execute(
        update(Sound).where(col(Sound.id) == sound.id).values(play_count=col(Sound.play_count) + 1)
    )
    row = SoundPlayed(
        user_id=user_id,
        sound_id=sound.id,
        sound_name=sound.name,
        guild_id=guild_id,
        channel_id=channel_id,
    )
    session.add(row)
    await session.flush()
    return row


def _count_play_statement() -> UpdateBase:
    sounds = Sound.__table__.c  # type: ignore[attr-defined]
    return (
        update(Sound)
        .where(sounds.id == bindparam("sound_id"))
        .values(play_count=sounds.play_count + 1)
    )


def _played_statement() -> UpdateBase:
    played = SoundPlayed.__table__.c  # type: ignore[attr-defined]
    return (
        insert(SoundPlayed)
        .values(
            user_id=bindparam("user_id"),
            sound_id=bindparam("sound_id"),
            sound_name=bindparam("sound_name"),
            guild_id=bindparam("guild_id"),
            channel_id=bindparam("channel_id"),
            played_at=bindparam("played_at"),
        )
        .returning(played.id)
    )


async def record_play_inline(
    db: Database,
    *,
    sound: Sound,
    user_id: int | None,
    guild_id: int | None,
    channel_id: int | None,
) -> SoundPlayed | None:
    """What record_play writes, as one inline write (Database.write_inline); None when it
    cannot run inline (not SQLite here, another process writing): use record_play."""
    count = db.write_query("sounds.count_play", _count_play_statement)
    add = db.write_query("sounds.played", _played_statement)
    row = SoundPlayed(
        user_id=user_id,
        sound_id=sound.id,
        sound_name=sound.name,
        guild_id=guild_id,
        channel_id=channel_id,
        played_at=utcnow(),
    )

    def work(tx: InlineWrite) -> SoundPlayed:
        tx.fetch(count, {"sound_id": sound.id})
        (row.id,) = tx.fetch(add, row.model_dump())[0]
        return row

    done = await db.write_inline(work)
    return None if done is None else done[0]


async def top_sounds(
    session: AsyncSession, *, guild_id: int, since: datetime, limit: int = 10
) -> list[tuple[str, int]]:
    stmt = (
        select(col(SoundPlayed.sound_name), func.count())
        .where(col(SoundPlayed.guild_id) == guild_id, col(SoundPlayed.played_at) >= since)
        .group_by(col(SoundPlayed.sound_name))
        .order_by(func.count().desc(), col(SoundPlayed.sound_name))
        .limit(limit)
    )
    return [(str(n), int(c)) for n, c in (await session.execute(stmt)).all()]


async def top_members(
    session: AsyncSession, *, guild_id: int, since: datetime, limit: int = 10
) -> list[tuple[int | None, str, int]]:
    stmt = (
        select(col(User.discord_id), col(User.display_name), func.count())
        .select_from(SoundPlayed)
        .join(User, col(User.id) == col(SoundPlayed.user_id))
        .where(col(SoundPlayed.guild_id) == guild_id, col(SoundPlayed.played_at) >= since)
        .group_by(col(User.id), col(User.discord_id), col(User.display_name))
        .order_by(func.count().desc(), col(User.display_name))
        .limit(limit)
    )
    return [(d, str(n), int(c)) for d, n, c in (await session.execute(stmt)).all()]


# ----- normalization leases -------------------------------------------------------------------
#
# A sound needs normalizing when it is not normalized and no attempt failed. Workers claim such
# sounds with a lease (owner, expiry) renewed while they work; a lease that ran out belongs to a
# dead worker and its sound is claimable again. Time is the database's on PostgreSQL (workers on
# several machines share one clock) and this machine's on SQLite (one machine anyway). On
# PostgreSQL the candidates are locked with FOR UPDATE SKIP LOCKED, so concurrent claimers never
# wait for or take each other's rows; on SQLite the write transaction (BEGIN IMMEDIATE)
# serializes claimers. Every later write is conditional on the lease still being ours.


# Ids per statement: both databases cap the number of bound parameters (about 32k).
ID_CHUNK = 500


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    unique = sorted(set(ids))
    return [unique[i : i + ID_CHUNK] for i in range(0, len(unique), ID_CHUNK)]


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _now(session: AsyncSession) -> ColumnElement[datetime]:
    if _is_postgres(session):
        return func.now(type_=UTCDateTime())
    return literal(utcnow(), UTCDateTime())


def _lease_until(session: AsyncSession, lease_seconds: float) -> ColumnElement[datetime]:
    if _is_postgres(session):
        return func.now(type_=UTCDateTime()) + literal(timedelta(seconds=lease_seconds), Interval())
    return literal(utcnow() + timedelta(seconds=lease_seconds), UTCDateTime())


def _lease_free(now: ColumnElement[datetime]) -> ColumnElement[bool]:
    until = col(Sound.normalize_lease_until)
    return or_(until.is_(None), until < now)


async def _rowcount(session: AsyncSession, stmt: Any) -> int:
    result: CursorResult[Any] = await session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount or 0)


async def get_many(session: AsyncSession, *, ids: Sequence[int]) -> list[Sound]:
    """These sounds as they are now (those that exist), by id."""
    found: list[Sound] = []
    for chunk in _chunks(ids):
        stmt = (
            select(Sound)
            .where(col(Sound.id).in_(chunk))
            .order_by(col(Sound.id))
            .execution_options(populate_existing=True)
        )
        found += (await session.scalars(stmt)).all()
    return found


async def any_needs_normalizing(session: AsyncSession) -> bool:
    """Is there a sound a worker could claim now? (A read: idle polls take no write lock.)"""
    stmt = (
        select(col(Sound.id))
        .where(text(NEEDS_NORMALIZING_SQL), _lease_free(_now(session)))
        .limit(1)
    )
    return await session.scalar(stmt) is not None


def claim_query(session: AsyncSession, *, limit: int) -> Select[Any]:
    """The ids a worker may claim, lowest first (served by ix_sound_needs_normalizing)."""
    stmt = (
        select(col(Sound.id))
        .where(text(NEEDS_NORMALIZING_SQL), _lease_free(_now(session)))
        .order_by(col(Sound.id))
        .limit(limit)
    )
    if _is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


async def claim_for_normalizing(
    session: AsyncSession, *, owner: str, limit: int, lease_seconds: float
) -> list[Sound]:
    """Lease up to `limit` sounds that need normalizing, lowest id first."""
    stmt = claim_query(session, limit=limit)
    ids = [int(i) for i in (await session.scalars(stmt)).all() if i is not None]
    if not ids:
        return []
    await session.execute(
        update(Sound)
        .where(col(Sound.id).in_(ids))
        .values(
            normalize_lease_owner=owner,
            normalize_lease_until=_lease_until(session, lease_seconds),
        )
    )
    return await get_many(session, ids=ids)


async def claim_by_ids(
    session: AsyncSession,
    *,
    ids: Sequence[int],
    owner: str,
    lease_seconds: float,
    unnormalized_only: bool,
    needs_normalizing_only: bool = False,
) -> list[Sound]:
    """Lease these sounds where no live lease is held (and, if asked, where they are still not
    normalized / still need normalizing). Returns the sounds leased, as they are now."""
    claimed: list[int] = []
    for chunk in _chunks(ids):
        stmt = update(Sound).where(col(Sound.id).in_(chunk), _lease_free(_now(session)))
        if needs_normalizing_only:
            stmt = stmt.where(text(NEEDS_NORMALIZING_SQL))
        elif unnormalized_only:
            stmt = stmt.where(col(Sound.is_normalized).is_(False))
        stmt = stmt.values(
            normalize_lease_owner=owner,
            normalize_lease_until=_lease_until(session, lease_seconds),
        ).returning(col(Sound.id))
        claimed += [int(i) for i in (await session.scalars(stmt)).all() if i is not None]
    return await get_many(session, ids=claimed)


async def held_by_others(session: AsyncSession, *, ids: Sequence[int], owner: str) -> list[int]:
    """Which of these sounds another owner holds a live lease on right now."""
    held: list[int] = []
    for chunk in _chunks(ids):
        stmt = select(col(Sound.id)).where(
            col(Sound.id).in_(chunk),
            col(Sound.normalize_lease_until) >= _now(session),
            col(Sound.normalize_lease_owner) != owner,
        )
        held += [int(i) for i in (await session.scalars(stmt)).all() if i is not None]
    return sorted(held)


async def renew_normalize_leases(
    session: AsyncSession, *, ids: Sequence[int], owner: str, lease_seconds: float
) -> int:
    """Extend our leases; returns how many are still ours."""
    held = 0
    for chunk in _chunks(ids):
        stmt = (
            update(Sound)
            .where(col(Sound.id).in_(chunk), col(Sound.normalize_lease_owner) == owner)
            .values(normalize_lease_until=_lease_until(session, lease_seconds))
        )
        held += await _rowcount(session, stmt)
    return held


async def finish_normalize_lease(
    session: AsyncSession, *, sound_id: int, owner: str, file_hash: str | None = None
) -> bool:
    """Clear our lease, if we still hold it (and the file is still the one we normalized).
    True means the caller may write its outcome in this same transaction: on PostgreSQL the
    row stays locked until commit, on SQLite the write transaction excludes everyone else."""
    stmt = update(Sound).where(col(Sound.id) == sound_id, col(Sound.normalize_lease_owner) == owner)
    if file_hash is not None:
        stmt = stmt.where(col(Sound.file_hash) == file_hash)
    stmt = stmt.values(normalize_lease_owner=None, normalize_lease_until=None)
    return await _rowcount(session, stmt) == 1


async def release_normalize_leases(session: AsyncSession, *, ids: Sequence[int], owner: str) -> int:
    """Give our leases back unfinished (shutdown): the sounds are claimable at once."""
    released = 0
    for chunk in _chunks(ids):
        stmt = (
            update(Sound)
            .where(col(Sound.id).in_(chunk), col(Sound.normalize_lease_owner) == owner)
            .values(normalize_lease_owner=None, normalize_lease_until=None)
        )
        released += await _rowcount(session, stmt)
    return released


async def normalize_leases(session: AsyncSession) -> list[tuple[int, str]]:
    """(sound id, owner) of every sound a lease is recorded on, live or expired."""
    stmt = select(col(Sound.id), col(Sound.normalize_lease_owner)).where(
        col(Sound.normalize_lease_owner).is_not(None)
    )
    return [(int(i or 0), str(o)) for i, o in (await session.execute(stmt)).all()]


async def expire_normalize_lease(session: AsyncSession, *, sound_id: int, owner: str) -> bool:
    """Make a dead worker's lease claimable at once."""
    stmt = (
        update(Sound)
        .where(col(Sound.id) == sound_id, col(Sound.normalize_lease_owner) == owner)
        .values(normalize_lease_until=None)
    )
    return await _rowcount(session, stmt) == 1


async def has_used_guild(session: AsyncSession, *, user_id: int, guild_id: int) -> bool:
    """Whether the user has played or uploaded a sound in the guild (the web's proof that
    someone belongs to a server: OAuth's `identify` scope does not list a user's servers)."""
    played = select(col(SoundPlayed.id)).where(
        col(SoundPlayed.user_id) == user_id, col(SoundPlayed.guild_id) == guild_id
    )
    uploaded = select(col(Sound.id)).where(
        col(Sound.uploader_id) == user_id, col(Sound.guild_id) == guild_id
    )
    for stmt in (played, uploaded):
        if (await session.execute(stmt.limit(1))).first() is not None:
            return True
    return False
