"""The scanner: add, change, delete and corrupt files between scans; check report and database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy import select

from core.models import SoundPlayed, SoundType
from core.services.container import Services
from tests.core import audiogen


def tone(path: Path, freq: int, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 48000 if path.suffix == ".opus" else 44100
    return audiogen.render(path, f"sine=frequency={freq}", seconds=seconds, rate=rate)


async def test_scan_add_change_delete_corrupt(services: Services) -> None:
    sdb = services.storage.originals / "soundboard"
    tone(sdb / "alpha.mp3", 300)
    tone(sdb / "nested" / "deeper" / "beta.wav", 400)
    tone(sdb / "g4242" / "guildy.ogg", 500)
    tone(services.storage.originals / "extracted" / "gamma.flac", 600)
    (sdb / "notes.txt").write_text("not a sound, and not an audio extension")
    (sdb / "broken.mp3").write_text("this is text pretending to be an mp3")
    shutil.copy(sdb / "alpha.mp3", sdb / "zz-alpha-copy.mp3")

    first = await services.scanner.scan(guild_id=None, normalize=False)
    assert sorted(first.added) == [
        "extracted/gamma.flac",
        "soundboard/alpha.mp3",
        "soundboard/g4242/guildy.ogg",
        "soundboard/nested/deeper/beta.wav",
    ]
    skipped = dict(first.skipped)
    assert "not usable audio" in skipped["soundboard/broken.mp3"]
    assert skipped["soundboard/zz-alpha-copy.mp3"] == "same audio as 'alpha'"
    sounds = {s.name: s for s in await services.sounds.list_all(all_guilds=True)}
    assert set(sounds) == {"alpha", "beta", "guildy", "gamma"}
    assert sounds["guildy"].guild_id == 4242 and sounds["alpha"].guild_id is None
    assert sounds["gamma"].sound_type == SoundType.EXT

    # Unchanged library: nothing to do.
    again = await services.scanner.scan(normalize=False)
    assert (again.added, again.updated, again.deleted) == ([], [], [])
    assert again.unchanged == 4

    # Play history survives a file's removal; a changed file is updated in place.
    user = await services.users.create(display_name="p", discord_id=99)
    await services.sounds.record_play(sounds["beta"], user_id=user.id, guild_id=1, channel_id=2)
    (sdb / "nested" / "deeper" / "beta.wav").unlink()
    tone(sdb / "alpha.mp3", 900, seconds=1.0)
    (sdb / "broken.mp3").unlink()
    (sdb / "zz-alpha-copy.mp3").unlink()
    tone(sdb / "delta.opus", 700)
    third = await services.scanner.scan(normalize=False)
    assert third.deleted == ["soundboard/nested/deeper/beta.wav"]
    assert third.updated == ["soundboard/alpha.mp3"]
    assert third.added == ["soundboard/delta.opus"]
    alpha = await services.sounds.find(1, "alpha")
    assert alpha.id == sounds["alpha"].id and alpha.duration_ms > 900
    async with services.db.session() as session:
        played = (await session.scalars(select(SoundPlayed))).one()
    assert played.sound_id is None and played.sound_name == "beta"


async def test_touched_but_identical_file_is_not_an_update(services: Services) -> None:
    path = tone(services.storage.originals / "soundboard" / "same.wav", 440)
    await services.scanner.scan(normalize=False)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    report = await services.scanner.scan(normalize=False)
    assert report.updated == [] and report.unchanged == 1
    # ...and the new mtime was recorded, so the next scan does not even hash it.
    assert (await services.sounds.find(0, "same")).file_mtime_ns == 1_000_000_000


async def test_scan_normalizes_new_files(services: Services) -> None:
    tone(services.storage.originals / "soundboard" / "loud.wav", 440)
    tone(services.storage.originals / "soundboard" / "other.wav", 550)
    report = await services.scanner.scan()
    assert report.added == ["soundboard/loud.wav", "soundboard/other.wav"]
    assert report.normalize_failed == []
    sound = await services.sounds.find(0, "loud")
    path, is_ogg = services.sounds.playback_file(sound)
    assert sound.is_normalized and is_ogg and path.exists()
    (services.storage.originals / "soundboard" / "loud.wav").unlink()
    await services.scanner.scan()
    assert not path.exists()


async def test_empty_originals_never_wipe_the_library(services: Services) -> None:
    """A scan with the sound folder unmounted (no files at all) removes nothing."""
    path = tone(services.storage.originals / "soundboard" / "keep.wav", 440)
    await services.scanner.scan(normalize=False)
    path.unlink()
    report = await services.scanner.scan(normalize=False)
    assert report.deleted == [] and "is the sound folder mounted" in report.skipped[0][1]
    assert [s.name for s in await services.sounds.list_all()] == ["keep"]


async def test_search_treats_wildcards_as_text(services: Services) -> None:
    names = {300: "100% loud", 350: "1000 loud", 400: "snake_case", 450: "snakeXcase"}
    for freq in names:
        tone(services.storage.originals / "soundboard" / f"{freq}.wav", freq)
    await services.scanner.scan(normalize=False)
    for sound in await services.sounds.list_all():
        await services.sounds.rename(sound.id or 0, names[int(sound.name)])
    found = await services.sounds.list_page(guild_id=None, search="0%")
    assert [s.name for s in found.items] == ["100% loud"]
    found = await services.sounds.list_page(guild_id=None, search="e_c")
    assert [s.name for s in found.items] == ["snake_case"]


async def test_replaced_file_after_a_failure_is_normalized_again(services: Services) -> None:
    path = services.storage.originals / "soundboard" / "fixme.wav"
    tone(path, 440)
    await services.scanner.scan(normalize=False)
    sound = await services.sounds.find(0, "fixme")
    async with services.db.transaction() as session:
        row = await session.get(type(sound), sound.id)
        assert row is not None
        row.normalize_error = "earlier failure"
    tone(path, 660, seconds=0.7)
    report = await services.scanner.scan(normalize=False)
    assert report.updated == ["soundboard/fixme.wav"]
    fresh = await services.sounds.get(sound.id or 0)
    assert fresh.normalize_error is None and not fresh.is_normalized
