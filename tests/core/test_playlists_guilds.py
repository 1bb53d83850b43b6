"""Playlists, guild settings, entrance sounds and play accounting, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import Conflict, InsufficientCredits, InvalidInput, NotFound
from core.models import Sound
from core.services.container import Services
from tests.core import audiogen
from tests.core.helpers import make_user


async def add_sounds(services: Services, tmp_path: Path, guild_id: int, n: int) -> list[Sound]:
    sounds = []
    for i in range(n):
        path = audiogen.render(
            tmp_path / f"s{i}.wav", f"sine=frequency={200 + 50 * i}", seconds=0.3
        )
        sounds.append(
            (
                await services.sounds.add_file(
                    path, name=f"s{i}", guild_id=guild_id, normalize=False
                )
            ).sound
        )
    return sounds


async def test_playlist_lifecycle(services: Services, tmp_path: Path) -> None:
    user = await make_user(services)
    uid = user.id or 0
    a, b, c = await add_sounds(services, tmp_path, 50, 3)
    await services.playlists.create(user_id=uid, guild_id=50, name="Mix")
    with pytest.raises(Conflict):
        await services.playlists.create(user_id=uid, guild_id=50, name="mix")
    for sound in (a, b, c):
        await services.playlists.add(user_id=uid, guild_id=50, name="mix", sound=sound)
    view = await services.playlists.move(
        user_id=uid, guild_id=50, name="Mix", from_position=3, to_position=1
    )
    assert [s.name for s in view.sounds] == ["s2", "s0", "s1"]
    removed = await services.playlists.remove(user_id=uid, guild_id=50, name="Mix", position=2)
    assert removed.name == "s0"
    view = await services.playlists.get(user_id=uid, guild_id=50, name="Mix")
    assert [s.name for s in view.sounds] == ["s2", "s1"]
    with pytest.raises(InvalidInput):
        await services.playlists.remove(user_id=uid, guild_id=50, name="Mix", position=9)
    other = await make_user(services, name="other")
    with pytest.raises(NotFound):  # someone else's playlist is not yours to edit
        await services.playlists.delete(user_id=other.id or 0, guild_id=50, name="Mix")
    # Deleting a sound drops it from playlists.
    await services.sounds.delete(c.id or 0)
    view = await services.playlists.get(user_id=uid, guild_id=50, name="Mix")
    assert [s.name for s in view.sounds] == ["s1"]
    await services.playlists.delete(user_id=uid, guild_id=50, name="Mix")
    assert await services.playlists.names(user_id=uid, guild_id=50) == []


async def test_playlist_refuses_sound_of_other_guild(services: Services, tmp_path: Path) -> None:
    user = await make_user(services)
    (foreign,) = await add_sounds(services, tmp_path, 61, 1)
    await services.playlists.create(user_id=user.id or 0, guild_id=60, name="p")
    with pytest.raises(NotFound):
        await services.playlists.add(user_id=user.id or 0, guild_id=60, name="p", sound=foreign)


async def test_guild_settings_defaults_and_validation(services: Services) -> None:
    config = await services.guilds.config(70)
    assert config.play_cost == services.settings.credits_play_cost
    config = await services.guilds.update(
        70, play_cost=5, queue_cap=3, entrance_sounds_enabled=False
    )
    assert (config.play_cost, config.queue_cap, config.entrance_sounds_enabled) == (5, 3, False)
    with pytest.raises(InvalidInput):
        await services.guilds.update(70, queue_cap=0)
    with pytest.raises(InvalidInput):
        await services.guilds.update(70, nonsense=1)
    config = await services.guilds.update(70, play_cost=None)
    assert config.play_cost == services.settings.credits_play_cost


async def test_play_charge_refund_and_record(services: Services, tmp_path: Path) -> None:
    user = await make_user(services, credits=3)
    (sound,) = await add_sounds(services, tmp_path, 80, 1)
    await services.guilds.update(80, play_cost=2)
    charge = await services.playback.charge(user_id=user.id or 0, sound=sound, guild_id=80)
    assert charge.balance_after == 1 and charge.transaction is not None
    assert charge.transaction.meta["sound"] == "s0"
    with pytest.raises(InsufficientCredits):
        await services.playback.charge(user_id=user.id or 0, sound=sound, guild_id=80)
    await services.playback.refund(charge, "not connected")
    await services.playback.played(charge, channel_id=5)
    assert (await services.users.get(user.id or 0)).credits == 3
    assert (await services.sounds.get(sound.id or 0)).play_count == 1
    assert await services.credits.verify() == []


async def test_entrance_sound(services: Services, tmp_path: Path) -> None:
    user = await make_user(services)
    (sound,) = await add_sounds(services, tmp_path, 90, 1)
    await services.guilds.set_entrance(user_id=user.id or 0, guild_id=90, sound_id=sound.id or 0)
    assert await services.guilds.entrance_of(user_id=user.id or 0, guild_id=90) == sound.id
    assert await services.guilds.clear_entrance(user_id=user.id or 0, guild_id=90)
    assert not await services.guilds.clear_entrance(user_id=user.id or 0, guild_id=90)
    assert await services.guilds.entrance_of(user_id=user.id or 0, guild_id=90) is None
