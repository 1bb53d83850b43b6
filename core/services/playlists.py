"""A member's playlists of sounds in one guild, in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Playlist, Sound
from core.repositories import guilds
from core.repositories import playlists as repo
from core.services.sounds import SoundService, clean_name

log = logging.getLogger(__name__)

MAX_PLAYLISTS = 25
MAX_ENTRIES = 100


@dataclass
class PlaylistView:
    playlist: Playlist
    sounds: list[Sound]


class PlaylistService:
    def __init__(self, db: Database, sounds: SoundService) -> None:
        self._db = db
        self._sounds = sounds

    async def create(self, *, user_id: int, guild_id: int, name: str) -> Playlist:
        name = clean_name(name)
        try:
            async with self._db.transaction() as session:
                await guilds.ensure(session, guild_id=guild_id)
                if await repo.get_by_name(session, user_id=user_id, guild_id=guild_id, name=name):
                    raise Conflict(f"You already have a playlist called '{name}'.")
                if (
                    await repo.count_for(session, user_id=user_id, guild_id=guild_id)
                    >= MAX_PLAYLISTS
                ):
                    raise InvalidInput(f"You can have at most {MAX_PLAYLISTS} playlists here.")
                playlist = Playlist(user_id=user_id, guild_id=guild_id, name=name)
                session.add(playlist)
                await session.flush()
        except IntegrityError:
            raise Conflict(f"You already have a playlist called '{name}'.") from None
        return playlist

    async def get(self, *, user_id: int, guild_id: int, name: str) -> PlaylistView:
        async with self._db.session() as session:
            playlist = await repo.get_by_name(
                session, user_id=user_id, guild_id=guild_id, name=name
            )
            if playlist is None:
                raise NotFound(f"You have no playlist called '{name[:100]}'.")
            entries = await repo.entries(session, playlist_id=playlist.id or 0)
        return PlaylistView(playlist, [sound for _, sound in entries])

    async def list_all(self, *, user_id: int, guild_id: int) -> list[PlaylistView]:
        async with self._db.session() as session:
            playlists = await repo.list_for(session, user_id=user_id, guild_id=guild_id)
            views = []
            for playlist in playlists:
                entries = await repo.entries(session, playlist_id=playlist.id or 0)
                views.append(PlaylistView(playlist, [sound for _, sound in entries]))
        return views

    async def names(self, *, user_id: int, guild_id: int) -> list[str]:
        async with self._db.session() as session:
            return [
                p.name for p in await repo.list_for(session, user_id=user_id, guild_id=guild_id)
            ]

    async def add(self, *, user_id: int, guild_id: int, name: str, sound: Sound) -> PlaylistView:
        if sound.guild_id not in (None, guild_id):
            raise NotFound("That sound does not exist in this server.")
        async with self._db.transaction() as session:
            playlist = await self._owned(session, user_id, guild_id, name)
            if len(await repo.entries(session, playlist_id=playlist.id or 0)) >= MAX_ENTRIES:
                raise InvalidInput(f"A playlist holds at most {MAX_ENTRIES} sounds.")
            await repo.append(session, playlist_id=playlist.id or 0, sound_id=sound.id or 0)
        return await self.get(user_id=user_id, guild_id=guild_id, name=name)

    async def remove(self, *, user_id: int, guild_id: int, name: str, position: int) -> Sound:
        """Remove the sound at 1-based `position`."""
        async with self._db.transaction() as session:
            playlist = await self._owned(session, user_id, guild_id, name)
            entries = await repo.entries(session, playlist_id=playlist.id or 0)
            if not 1 <= position <= len(entries):
                raise InvalidInput(f"Position must be between 1 and {len(entries)}.")
            entry, sound = entries[position - 1]
            await repo.remove_entry(session, entry_id=entry.id or 0)
            await repo.renumber(session, order=[e for e, _ in entries if e.id != entry.id])
        return sound

    async def move(
        self, *, user_id: int, guild_id: int, name: str, from_position: int, to_position: int
    ) -> PlaylistView:
        async with self._db.transaction() as session:
            playlist = await self._owned(session, user_id, guild_id, name)
            entries = [e for e, _ in await repo.entries(session, playlist_id=playlist.id or 0)]
            count = len(entries)
            for pos in (from_position, to_position):
                if not 1 <= pos <= count:
                    raise InvalidInput(f"Positions must be between 1 and {count}.")
            entry = entries.pop(from_position - 1)
            entries.insert(to_position - 1, entry)
            await repo.renumber(session, order=entries)
        return await self.get(user_id=user_id, guild_id=guild_id, name=name)

    async def delete(self, *, user_id: int, guild_id: int, name: str) -> None:
        async with self._db.transaction() as session:
            playlist = await self._owned(session, user_id, guild_id, name)
            await session.delete(playlist)

    @staticmethod
    async def _owned(session: AsyncSession, user_id: int, guild_id: int, name: str) -> Playlist:
        playlist = await repo.get_by_name(
            session,
            user_id=user_id,
            guild_id=guild_id,
            name=name,
        )
        if playlist is None:
            raise NotFound(f"You have no playlist called '{name[:100]}'.")
        return playlist
