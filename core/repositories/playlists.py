from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.models import Playlist, PlaylistSound, Sound


async def get_by_name(
    session: AsyncSession, *, user_id: int, guild_id: int, name: str
) -> Playlist | None:
    stmt = select(Playlist).where(
        col(Playlist.user_id) == user_id,
        col(Playlist.guild_id) == guild_id,
        func.lower(col(Playlist.name)) == name.lower(),
    )
    return (await session.scalars(stmt)).first()


async def list_for(session: AsyncSession, *, user_id: int, guild_id: int) -> list[Playlist]:
    stmt = (
        select(Playlist)
        .where(col(Playlist.user_id) == user_id, col(Playlist.guild_id) == guild_id)
        .order_by(col(Playlist.name))
    )
    return list((await session.scalars(stmt)).all())


async def count_for(session: AsyncSession, *, user_id: int, guild_id: int) -> int:
    stmt = (
        select(func.count())
        .select_from(Playlist)
        .where(col(Playlist.user_id) == user_id, col(Playlist.guild_id) == guild_id)
    )
    return int((await session.execute(stmt)).scalar_one())


async def entries(session: AsyncSession, *, playlist_id: int) -> list[tuple[PlaylistSound, Sound]]:
    stmt = (
        select(PlaylistSound, Sound)
        .join(Sound, col(Sound.id) == col(PlaylistSound.sound_id))
        .where(col(PlaylistSound.playlist_id) == playlist_id)
        .order_by(col(PlaylistSound.position), col(PlaylistSound.id))
    )
    return [(e, s) for e, s in (await session.execute(stmt)).all()]


async def append(session: AsyncSession, *, playlist_id: int, sound_id: int) -> PlaylistSound:
    stmt = select(func.coalesce(func.max(col(PlaylistSound.position)), -1)).where(
        col(PlaylistSound.playlist_id) == playlist_id
    )
    position = int((await session.execute(stmt)).scalar_one()) + 1
    row = PlaylistSound(playlist_id=playlist_id, sound_id=sound_id, position=position)
    session.add(row)
    await session.flush()
    return row


async def renumber(session: AsyncSession, *, order: list[PlaylistSound]) -> None:
    for position, entry in enumerate(order):
        if entry.position != position:
            await session.execute(
                update(PlaylistSound)
                .where(col(PlaylistSound.id) == entry.id)
                .values(position=position)
            )


async def remove_entry(session: AsyncSession, *, entry_id: int) -> None:
    await session.execute(delete(PlaylistSound).where(col(PlaylistSound.id) == entry_id))
