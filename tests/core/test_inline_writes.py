"""Credit changes on SQLite run as one inline write; anything it cannot do goes the usual way."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from core.errors import InsufficientCredits
from core.models import CreditTransaction, SoundPlayed, User
from core.services.container import Services
from tests.conftest import make_settings
from tests.core import audiogen
from tests.core.helpers import make_user


@pytest.fixture
async def sqlite_services(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Services]:
    async with Services.from_settings(make_settings(tmp_path, sqlite_url)) as services:
        yield services


def database_file(services: Services) -> str:
    database = make_url(services.db.engine.url).database
    assert database
    return database


async def test_inline_charge_writes_what_the_session_path_writes(
    sqlite_services: Services,
) -> None:
    services = sqlite_services
    user = await make_user(services, credits=10)
    uid = user.id or 0
    spent = await services.credits.deduct(uid, 3, meta={"sound": "airhorn", "guild_id": 7})
    assert services.db._inline_writer is not None and services.db._inline_writer._conn is not None
    refund = await services.credits.refund(uid, 3, of_transaction=spent.id, reason="left")
    async with services.db.session() as session:
        rows = {
            row.id: row
            for row in await session.scalars(
                select(CreditTransaction).where(CreditTransaction.user_id == uid)  # type: ignore[arg-type]
            )
        }
        stored_user = await session.get(User, uid)
    for returned in (spent, refund):
        stored = rows[returned.id]
        assert (stored.action, stored.amount, stored.balance_before, stored.balance_after) == (
            returned.action,
            returned.amount,
            returned.balance_before,
            returned.balance_after,
        )
        assert stored.meta == returned.meta and stored.success is True
        assert stored.created_at == returned.created_at
        assert stored.created_at.tzinfo is not None
    assert spent.meta == {"sound": "airhorn", "guild_id": 7}
    assert (spent.balance_after, refund.balance_after) == (7, 10)
    assert stored_user is not None and stored_user.credits == 10
    assert stored_user.updated_at >= spent.created_at
    assert await services.credits.verify() == []


async def test_short_balance_still_refused_with_details_and_nothing_written(
    sqlite_services: Services,
) -> None:
    services = sqlite_services
    user = await make_user(services, credits=2)
    uid = user.id or 0
    before = (await services.credits.history(uid, limit=200)).items
    with pytest.raises(InsufficientCredits) as refused:
        await services.credits.deduct(uid, 5)
    assert refused.value.balance == 2 and refused.value.needed == 5
    assert (await services.credits.history(uid, limit=200)).items == before
    assert (await services.users.get(uid)).credits == 2


async def test_another_process_writing_makes_it_wait_its_turn_without_blocking_the_loop(
    sqlite_services: Services,
) -> None:
    """What was tried: another connection (as another process would) holds SQLite's write
    lock; the charge must neither fail nor freeze the event loop, and land once it is free."""
    services = sqlite_services
    user = await make_user(services, credits=10)
    uid = user.id or 0
    other = sqlite3.connect(database_file(services), timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        charge = asyncio.create_task(services.credits.deduct(uid, 4))
        await asyncio.sleep(0.3)
        assert not charge.done()
        assert ticks >= 10  # the loop kept running while the charge waited
        other.execute("COMMIT")
        spent = await asyncio.wait_for(charge, timeout=10)
    finally:
        ticking.cancel()
        other.close()
    assert spent.balance_after == 6
    assert (await services.users.get(uid)).credits == 6
    assert await services.credits.verify() == []


async def test_concurrent_inline_charges_never_overdraw(sqlite_services: Services) -> None:
    services = sqlite_services
    user = await make_user(services, credits=50)
    uid = user.id or 0
    results = await asyncio.gather(
        *(services.credits.deduct(uid, 1) for _ in range(80)), return_exceptions=True
    )
    spent = [r for r in results if isinstance(r, CreditTransaction)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(spent) == 50 and len(refused) == 30
    assert sorted(r.balance_after for r in spent) == list(range(50))
    assert (await services.users.get(uid)).credits == 0
    assert await services.credits.verify() == []


async def test_play_record_inline_matches_the_orm_and_waits_for_other_writers(
    sqlite_services: Services, tmp_path: Path
) -> None:
    services = sqlite_services
    user = await make_user(services)
    added = await services.sounds.add_file(
        audiogen.render(tmp_path / "t.wav", "sine=frequency=440", seconds=1.0),
        name="ding",
        guild_id=5,
        normalize=False,
    )
    sound = added.sound
    played = await services.sounds.record_play(sound, user_id=user.id, guild_id=5, channel_id=50)
    # What was tried: another connection holds the write lock during the second record.
    other = sqlite3.connect(database_file(services), timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    second = asyncio.create_task(
        services.sounds.record_play(sound, user_id=None, guild_id=5, channel_id=None)
    )
    await asyncio.sleep(0.2)
    assert not second.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(second, timeout=10)
    async with services.db.session() as session:
        stored = await session.get(SoundPlayed, played.id)
    assert stored is not None
    assert (stored.sound_id, stored.sound_name, stored.user_id, stored.guild_id) == (
        sound.id,
        "ding",
        user.id,
        5,
    )
    assert stored.channel_id == 50 and stored.played_at == played.played_at
    assert (await services.sounds.get(sound.id or 0)).play_count == 2
    stats = await services.sounds.stats(5)
    assert stats.top_sounds == [("ding", 2)]
