from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from core.models import Sound, SoundPlayed, SoundTag, SoundType, User
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
        stmt = stmt.where(func.lower(col(Sound.name)).contains(search.lower()))
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
