"""The sound library service: adding (limits, dedupe, bad files), managing, playback files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.errors import Conflict, InvalidInput, NotFound
from core.models import SoundType
from core.services.container import Services
from core.services.sounds import rank_names
from core.storage import TEMP_PREFIX, slugify
from tests.conftest import make_settings
from tests.core import audiogen


def tone(path: Path, *, freq: int = 440, seconds: float = 1.0) -> Path:
    return audiogen.render(path, f"sine=frequency={freq}:sample_rate=44100", seconds=seconds)


def library_files(services: Services) -> list[Path]:
    return sorted(p for p in services.storage.root.rglob("*") if p.is_file())


async def test_add_normalizes_into_playback_file(services: Services, tmp_path: Path) -> None:
    src = tone(tmp_path / "beep.mp3")
    result = await services.sounds.add_file(src, name="Beep!", guild_id=11, tags="short,Test")
    sound = result.sound
    assert result.created and sound.is_normalized and result.normalize_error is None
    assert sound.guild_id == 11 and 900 <= sound.duration_ms <= 1100
    path, is_ogg = services.sounds.playback_file(sound)
    assert is_ogg and path.exists() and path.suffix == ".ogg"
    assert path.is_relative_to(services.storage.normalized / "soundboard")
    info = audiogen.opus_stream_info(path)
    assert info.channels == 2 and info.packet_durations_us == {20_000}
    view = (await services.sounds.views([sound]))[0]
    assert view.tags == ["short", "test"]
    assert Path(str(view.as_dict()["original_path"])).read_bytes() == src.read_bytes()


async def test_same_audio_twice_returns_existing(services: Services, tmp_path: Path) -> None:
    src = tone(tmp_path / "a.wav")
    first = await services.sounds.add_file(src, name="one", guild_id=1, normalize=False)
    files = library_files(services)
    again = await services.sounds.add_file(src, name="two", guild_id=1, normalize=False)
    assert not again.created and again.sound.id == first.sound.id
    assert "already in the library as 'one'" in again.message
    assert library_files(services) == files
    # Another guild may hold the same audio under the same name, in its own file.
    other = await services.sounds.add_file(src, name="one", guild_id=2, normalize=False)
    assert other.created and other.sound.original_filename != first.sound.original_filename


async def test_same_audio_added_concurrently_gives_one_row(
    services: Services, tmp_path: Path
) -> None:
    """A double click: the same upload twice at once."""
    src = tone(tmp_path / "dbl.wav")
    results = await asyncio.gather(
        *(services.sounds.add_file(src, name="dbl", guild_id=3, normalize=False) for _ in range(2)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException) and r.created]
    assert len(created) == 1
    assert len(await services.sounds.list_all(guild_id=3)) == 1
    assert len([p for p in library_files(services) if "g3" in p.parts]) == 1


async def test_duplicate_name_and_bad_names(services: Services, tmp_path: Path) -> None:
    await services.sounds.add_file(
        tone(tmp_path / "x.wav"), name="horn", guild_id=4, normalize=False
    )
    with pytest.raises(Conflict, match="already exists"):
        await services.sounds.add_file(
            tone(tmp_path / "y.wav", freq=660), name="horn", guild_id=4, normalize=False
        )
    for bad, message in (
        ("x" * 500, "at most 100"),
        ("   ", "needs a name"),
        ("a\x00b", "control"),
    ):
        with pytest.raises(InvalidInput, match=message):
            await services.sounds.add_file(
                tone(tmp_path / "z.wav", freq=770), name=bad, guild_id=4, normalize=False
            )
    with pytest.raises(InvalidInput, match="Tag"):
        await services.sounds.add_file(
            tone(tmp_path / "t.wav", freq=880),
            name="t",
            guild_id=4,
            tags="ok,no spaces!",
            normalize=False,
        )
    assert [s.name for s in await services.sounds.list_all(guild_id=4)] == ["horn"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b"") or p, "empty"),
        (lambda p: p.write_text("hello, I am text\n" * 50) or p, "not"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200) or p, "image"),
    ],
    ids=["zero-bytes", "text-renamed-mp3", "png-renamed-mp3"],
)
async def test_corrupt_files_are_rejected_and_leave_nothing(
    services: Services, tmp_path: Path, make: object, reason: str
) -> None:
    path = tmp_path / "bad.mp3"
    make(path)  # type: ignore[operator]
    before = library_files(services)
    with pytest.raises(InvalidInput) as info:
        await services.sounds.add_file(path, name="bad", guild_id=5)
    assert "not usable audio" in str(info.value) and reason in str(info.value).lower()
    assert library_files(services) == before
    assert await services.sounds.list_all(guild_id=5) == []


async def test_size_and_duration_limits(tmp_path: Path, database_url: str) -> None:
    small = make_settings(tmp_path, database_url, sound_max_bytes=20_000)
    async with Services.from_settings(small) as services:
        big = audiogen.render(tmp_path / "big.wav", "anoisesrc=d=2", seconds=1.5)
        kb = round(big.stat().st_size / 1000)
        with pytest.raises(InvalidInput, match=rf"too big \({kb} KB; the limit is 20 KB\)"):
            await services.sounds.add_file(big, name="big", normalize=False)
        assert await services.sounds.list_all() == []
    short = make_settings(tmp_path, database_url, sound_max_duration_ms=2_000)
    async with Services.from_settings(short) as services:
        long = audiogen.render(tmp_path / "long.mp3", "sine=frequency=300", seconds=3)
        with pytest.raises(InvalidInput, match="too long"):
            await services.sounds.add_file(long, name="long", normalize=False)
        assert await services.sounds.list_all() == []


@pytest.fixture(scope="module")
def two_hour_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("long") / "twohours.mp3"
    return audiogen.render(dst, "anullsrc=r=8000:cl=mono", seconds=7200, rate=8000, channels=1)


async def test_two_hour_file_is_refused_before_decoding(
    tmp_path: Path, database_url: str, two_hour_mp3: Path
) -> None:
    settings = make_settings(tmp_path, database_url, sound_max_bytes=200_000_000)
    async with Services.from_settings(settings) as services:
        with pytest.raises(InvalidInput, match=r"too long \(120\.0 min"):
            await services.sounds.add_file(two_hour_mp3, name="huge", normalize=False)
        assert await services.sounds.list_all() == []


async def test_rename_tag_delete_keep_history(services: Services, tmp_path: Path) -> None:
    user = await services.users.create(display_name="u", discord_id=777)
    added = await services.sounds.add_file(tone(tmp_path / "r.wav"), name="first", guild_id=6)
    sound = added.sound
    await services.sounds.record_play(sound, user_id=user.id, guild_id=6, channel_id=60)
    assert (await services.sounds.get(sound.id or 0)).play_count == 1
    renamed = await services.sounds.rename(sound.id or 0, "second")
    assert renamed.name == "second"
    assert (await services.sounds.find(6, "second")).id == sound.id
    assert (await services.sounds.find(6, str(sound.id))).id == sound.id
    assert await services.sounds.set_tags(sound.id or 0, ["Meme", "meme", "loud"]) == [
        "loud",
        "meme",
    ]
    stats = await services.sounds.stats(6)
    assert stats.top_sounds == [("first", 1)] and stats.top_members[0][2] == 1
    original, _ = services.storage.original_path(sound.sound_type, sound.original_filename), 0
    normalized, _ = services.sounds.playback_file(renamed)
    await services.sounds.delete(sound.id or 0)
    assert not original.exists() and not normalized.exists()
    with pytest.raises(NotFound):
        await services.sounds.get(sound.id or 0)
    assert (await services.sounds.stats(6)).top_sounds == [("first", 1)]


async def test_guild_scoping_and_global_library(services: Services, tmp_path: Path) -> None:
    mine = await services.sounds.add_file(
        tone(tmp_path / "m.wav"), name="mine", guild_id=7, normalize=False
    )
    shared = await services.sounds.add_file(
        tone(tmp_path / "g.wav", freq=500), name="shared", normalize=False
    )
    assert (await services.sounds.get_for_guild(shared.sound.id or 0, 8)).name == "shared"
    with pytest.raises(NotFound, match="this server"):
        await services.sounds.get_for_guild(mine.sound.id or 0, 8)
    with pytest.raises(NotFound):
        await services.sounds.find(8, "mine")
    page = await services.sounds.list_page(guild_id=7)
    assert {s.name for s in page.items} == {"mine", "shared"}


async def test_find_by_name_follows_renames_deletes_and_shadowing(
    services: Services, tmp_path: Path
) -> None:
    """Plays by name are served from a short cache; every change made here is seen at once."""
    shared = await services.sounds.add_file(
        tone(tmp_path / "s.wav", freq=300), name="horn", normalize=False
    )
    assert (await services.sounds.find(9, "horn")).id == shared.sound.id
    assert (await services.sounds.find(9, "horn")).id == shared.sound.id  # from the cache
    # A server's own sound shadows the global one of the same name.
    own = await services.sounds.add_file(
        tone(tmp_path / "o.wav", freq=600), name="horn", guild_id=9, normalize=False
    )
    assert (await services.sounds.find(9, "horn")).id == own.sound.id
    await services.sounds.rename(own.sound.id or 0, "horn2")
    assert (await services.sounds.find(9, "horn")).id == shared.sound.id
    assert (await services.sounds.find(9, "horn2")).id == own.sound.id
    await services.sounds.delete(shared.sound.id or 0)
    with pytest.raises(NotFound):
        await services.sounds.find(9, "horn")


async def test_autocomplete_prefix_then_fuzzy(services: Services, tmp_path: Path) -> None:
    for i, name in enumerate(["airhorn", "air raid", "bruh", "chair", "sad trombone"]):
        await services.sounds.add_file(
            tone(tmp_path / f"{i}.wav", freq=300 + 40 * i), name=name, guild_id=9, normalize=False
        )
    names = [n for _, n in await services.sounds.autocomplete(9, "air")]
    assert names[:2] == ["air raid", "airhorn"] and "chair" in names
    assert [n for _, n in await services.sounds.autocomplete(9, "trombon")] == ["sad trombone"]
    assert [n for _, n in await services.sounds.autocomplete(9, "brh")] == ["bruh"]
    assert len(await services.sounds.autocomplete(9, "")) == 5


def test_rank_names_caps_at_25() -> None:
    names = [(i, f"sound {i}") for i in range(100)]
    assert len(rank_names(names, "sound")) == 25


def test_slugify_is_safe() -> None:
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("Ünïcödé   name!!") == "unicode-name"
    assert slugify("///") == "sound"
    assert len(slugify("x" * 500)) <= 60


async def test_stale_temporaries_are_removed_at_start(tmp_path: Path, database_url: str) -> None:
    """A crash mid-write leaves a temporary beside its target; the next start removes it."""
    import os

    settings = make_settings(tmp_path, database_url)
    async with Services.from_settings(settings) as services:
        stale = services.storage.originals / "soundboard" / f"{TEMP_PREFIX}crash.mp3"
        stale.write_bytes(b"half")
        fresh = services.storage.temp / "in-progress.part"
        fresh.write_bytes(b"busy")
        os.utime(stale, (1, 1))
    async with Services.from_settings(settings):
        pass
    assert not stale.exists() and fresh.exists()


async def test_sound_types_go_to_their_folders(services: Services, tmp_path: Path) -> None:
    result = await services.sounds.add_file(
        tone(tmp_path / "t.wav"), name="said", sound_type=SoundType.TTS, normalize=False
    )
    path = services.storage.original_path(SoundType.TTS, result.sound.original_filename)
    assert path.is_relative_to(services.storage.originals / "text_to_speech") and path.exists()
