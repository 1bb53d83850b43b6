"""Repositories and constraints, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core.models import Extraction, Playlist, PlaylistSound, Sound, SoundPlayed, SoundType
from core.repositories import api_tokens, guilds, ledger, oauth, users
from core.repositories.base import InvalidCursor
from core.services.container import Services
from tests.core.helpers import make_user


def _sound(guild_id: int | None, name: str, digest: str, **extra: object) -> Sound:
    return Sound.model_validate(
        {
            "guild_id": guild_id,
            "name": name,
            "sound_type": SoundType.SDB,
            "original_filename": f"{name}.mp3",
            "duration_ms": 1000,
            "size_bytes": 10,
            "file_hash": digest,
            **extra,
        }
    )


async def test_user_crud_and_unique_discord_id(services: Services) -> None:
    user = await make_user(services, name="Ada")
    async with services.db.session() as session:
        assert (await users.get_by_discord_id(session, discord_id=user.discord_id or 0)) == user
        assert await users.get(session, user_id=123456) is None
    with pytest.raises(Exception, match="already exists"):
        await services.users.create(display_name="Copy", discord_id=user.discord_id)
    renamed = await services.users.update_profile(user.id or 0, display_name="Ada L.")
    assert renamed.display_name == "Ada L."
    moved = await services.users.set_plan(user.id or 0, "plus")
    assert (await services.users.summary(moved.id or 0)).plan.code == "plus"


async def test_duplicate_oauth_identity_is_refused(services: Services) -> None:
    a = await make_user(services, name="a")
    b = await make_user(services, name="b")
    async with services.db.transaction() as session:
        await oauth.link(session, user_id=a.id or 0, provider="github", provider_user_id="77")
    with pytest.raises(IntegrityError):
        async with services.db.transaction() as session:
            await oauth.link(session, user_id=b.id or 0, provider="github", provider_user_id="77")
    async with services.db.session() as session:
        found = await oauth.get_identity(session, provider="github", provider_user_id="77")
        assert found is not None and found.user_id == a.id
        assert await oauth.count_for_user(session, user_id=b.id or 0) == 0


async def test_api_tokens_store_hash_and_revoke(services: Services) -> None:
    user = await make_user(services)
    async with services.db.transaction() as session:
        token = await api_tokens.create(
            session, user_id=user.id or 0, name="deck", token_hash="h" * 64, prefix="sb_abcd"
        )
    async with services.db.transaction() as session:
        assert await api_tokens.get_active_by_hash(session, token_hash="h" * 64) is not None
        await api_tokens.revoke(session, token=token)
    async with services.db.session() as session:
        assert await api_tokens.get_active_by_hash(session, token_hash="h" * 64) is None
        assert [t.name for t in await api_tokens.list_for_user(session, user_id=user.id or 0)] == [
            "deck"
        ]


async def test_sound_name_and_hash_unique_per_guild_and_globally(services: Services) -> None:
    async with services.db.transaction() as session:
        await guilds.ensure(session, guild_id=1, name="one")
        await guilds.ensure(session, guild_id=2, name="two")
        session.add(_sound(1, "horn", "a" * 64))
        session.add(_sound(2, "horn", "a" * 64))  # same name and audio, other guild: fine
        session.add(_sound(None, "horn", "a" * 64))  # and in the global library
    cases = [
        _sound(1, "horn", "b" * 64),  # duplicate name in a guild
        _sound(1, "other", "a" * 64),  # duplicate audio in a guild
        _sound(None, "horn", "c" * 64),  # duplicate global name (NULL guild)
        _sound(None, "other", "a" * 64),  # duplicate global audio
    ]
    for sound in cases:
        with pytest.raises(IntegrityError):
            async with services.db.transaction() as session:
                session.add(sound)
    async with services.db.session() as session:
        assert (await session.execute(select(func.count()).select_from(Sound))).scalar_one() == 3


async def test_deleting_a_sound_keeps_history_and_drops_playlist_entries(
    services: Services,
) -> None:
    user = await make_user(services)
    async with services.db.transaction() as session:
        await guilds.ensure(session, guild_id=5)
        sound = _sound(5, "bye", "d" * 64)
        session.add(sound)
        await session.flush()
        playlist = Playlist(user_id=user.id or 0, guild_id=5, name="mix")
        session.add(playlist)
        await session.flush()
        session.add(PlaylistSound(playlist_id=playlist.id or 0, sound_id=sound.id or 0, position=0))
        session.add(SoundPlayed(user_id=user.id, sound_id=sound.id, sound_name="bye", guild_id=5))
        session.add(
            Extraction(
                url="https://x.example/v", user_id=user.id or 0, guild_id=5, sound_id=sound.id
            )
        )
    async with services.db.transaction() as session:
        await session.delete(await session.get(Sound, sound.id))
    async with services.db.session() as session:
        played = (await session.scalars(select(SoundPlayed))).one()
        assert played.sound_id is None and played.sound_name == "bye"
        assert (await session.scalars(select(PlaylistSound))).all() == []
        assert (await session.scalars(select(Extraction))).one().sound_id is None


async def test_keyset_pagination_is_stable_while_rows_arrive(services: Services) -> None:
    user = await make_user(services, credits=0)
    uid = user.id or 0
    for _ in range(25):
        await services.credits.grant(uid, 1, reason="x")
    first = await services.credits.history(uid, limit=10)
    assert len(first.items) == 10 and first.next_cursor
    # New rows land on top; the next page continues exactly where the first one stopped.
    for _ in range(5):
        await services.credits.grant(uid, 1, reason="late")
    second = await services.credits.history(uid, limit=10, cursor=first.next_cursor)
    assert (second.items[0].id or 0) == (first.items[-1].id or 0) - 1
    third = await services.credits.history(uid, limit=10, cursor=second.next_cursor)
    seen = [t.id for t in first.items + second.items + third.items]
    assert len(seen) == len(set(seen)) == 27  # 25 grants, take-to-zero, signup
    assert third.next_cursor is None
    grants = await services.credits.history(uid, limit=100, action="grant")
    assert {t.action for t in grants.items} == {"grant"} and len(grants.items) == 30
    with pytest.raises(InvalidCursor):
        await services.credits.history(uid, cursor="not-a-cursor")


async def test_ledger_user_cannot_be_deleted_with_rows(services: Services) -> None:
    user = await make_user(services)
    with pytest.raises(IntegrityError):
        async with services.db.transaction() as session:
            await session.delete(await users.get(session, user_id=user.id or 0))
    async with services.db.session() as session:
        rows = [r async for r in ledger.iter_for_user(session, user_id=user.id or 0)]
    assert len(rows) == 1


async def test_guild_ensure_is_idempotent(services: Services) -> None:
    async with services.db.transaction() as session:
        await guilds.ensure(session, guild_id=9, name="first")
        again = await guilds.ensure(session, guild_id=9, name="renamed")
        await guilds.update_settings(session, guild=again, play_cost=3, queue_cap=5)
    async with services.db.session() as session:
        guild = await guilds.get(session, guild_id=9)
    assert guild is not None and (guild.name, guild.play_cost, guild.queue_cap) == (
        "renamed",
        3,
        5,
    )
