"""/api/v1 sounds, play, extractions and the admin library tools (without a bot: the play
endpoint's conversation with the bot is played here by a stand-in on the event bus; the real
bot is in tests/bot/test_remote_play.py)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from pathlib import Path
from typing import Any

import pytest

from core.events import Event, PlayAnswered, PlayClaimed, PlayRequested
from core.models import Sound, SoundPlayed, User
from tests.core import audiogen
from tests.core.helpers import make_user
from tests.web.conftest import Web

_freqs = itertools.count(200, 37)
GUILD = 424_242_424_242_424_242


async def _token(web: Web, user: User, name: str = "test") -> dict[str, str]:
    created = await web.services.accounts.create_token(user.id or 0, name)
    return {"Authorization": f"Bearer {created.plaintext}"}


async def _admin_headers(web: Web) -> dict[str, str]:
    admin = await make_user(web.services, name="admin")
    await web.make_admin(admin)
    return await _token(web, admin, "admin")


async def _used_guild(web: Web, user: User, guild_id: int = GUILD) -> None:
    """Give the user a play in the guild: the web's proof that they belong to that server."""
    async with web.services.db.transaction() as session:
        session.add(SoundPlayed(user_id=user.id, sound_name="earlier", guild_id=guild_id))


async def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"]["code"] == code and body["error"]["status"] == status, body
    assert body["error"]["message"]
    return dict(body["error"])


def _tone(path: Path, freq: int, seconds: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.render(path, f"sine=frequency={freq}", seconds=seconds, rate=48000)


async def _add(
    web: Web, tmp_path: Path, name: str, *, guild: int | None = None, **kw: Any
) -> Sound:
    freq = next(_freqs)
    path = await asyncio.to_thread(_tone, tmp_path / "in" / f"{name}-{freq}.wav", freq)
    result = await web.services.sounds.add_file(
        path, name=name, guild_id=guild, normalize=False, **kw
    )
    return result.sound


# ----- listing ------------------------------------------------------------------------------


async def test_list_sounds_pages_and_filters(web: Web, tmp_path: Path) -> None:
    glob = [
        await _add(web, tmp_path, "airhorn", tags="loud,horn"),
        await _add(web, tmp_path, "applause"),
        await _add(web, tmp_path, "Air raid", tags="loud"),
    ]
    own = [
        await _add(web, tmp_path, "guild horn", guild=GUILD, tags="horn"),
        await _add(web, tmp_path, "guild bell", guild=GUILD),
    ]
    await _add(web, tmp_path, "elsewhere", guild=GUILD + 1)
    user = await make_user(web.services)
    headers = await _token(web, user)

    async def get(query: str) -> dict[str, Any]:
        response = await web.client.get(f"/api/v1/sounds{query}", headers=headers)
        assert response.status == 200, await response.text()
        return dict(await response.json())

    # The global library, paged by id with a stable cursor.
    first = await get("?limit=2")
    assert [s["id"] for s in first["items"]] == [glob[0].id, glob[1].id]
    item = first["items"][0]
    assert item == {
        "id": glob[0].id,
        "name": "airhorn",
        "guild": None,
        "type": "SDB",
        "duration_ms": glob[0].duration_ms,
        "play_count": 0,
        "tags": ["horn", "loud"],
        "is_normalized": False,
    }
    second = await get(f"?limit=2&cursor={first['next_cursor']}")
    assert [s["id"] for s in second["items"]] == [glob[2].id]
    assert second["next_cursor"] is None

    # A guild: its own sounds and the global ones; guild ids are strings.
    both = await get(f"?guild={GUILD}")
    assert {s["id"] for s in both["items"]} == {s.id for s in glob + own}
    assert {s["guild"] for s in both["items"]} == {None, str(GUILD)}
    only = await get(f"?guild={GUILD}&include_global=0")
    assert [s["name"] for s in only["items"]] == ["guild horn", "guild bell"]
    tagged = await get(f"?guild={GUILD}&tag=HORN")
    assert [s["name"] for s in tagged["items"]] == ["airhorn", "guild horn"]
    found = await get("?search=AIR")
    assert [s["name"] for s in found["items"]] == ["airhorn", "Air raid"]
    assert (await get("?tag=nothing-has-it")) == {"items": [], "next_cursor": None}

    for query, status, code in [
        ("?guild=abc", 422, "invalid"),
        ("?guild=0", 422, "invalid"),
        ("?guild=99999999999999999999", 422, "invalid"),
        ("?limit=0", 422, "invalid"),
        ("?limit=500", 422, "invalid"),
        ("?tag=no%20spaces", 422, "invalid"),
        ("?include_global=maybe", 422, "invalid"),
        ("?search=" + "x" * 101, 422, "invalid"),
        ("?cursor=garbage", 400, "invalid_cursor"),
    ]:
        await _error(await web.client.get(f"/api/v1/sounds{query}", headers=headers), status, code)
    await _error(await web.client.get("/api/v1/sounds"), 401, "unauthorized")


# ----- admin tools --------------------------------------------------------------------------


async def test_admin_scan_and_normalize(web: Web) -> None:
    user = await make_user(web.services)
    plain = await _token(web, user)
    for path in ("/api/v1/admin/scan", "/api/v1/admin/normalize"):
        await _error(
            await web.client.post(path, json={"all": True}, headers=plain), 403, "forbidden"
        )
    admin = await _admin_headers(web)

    originals = web.services.storage.originals
    await asyncio.to_thread(_tone, originals / "soundboard" / "scan_one.wav", 330, 0.5)
    await asyncio.to_thread(_tone, originals / "soundboard" / "g77" / "scan_two.wav", 550, 0.5)
    (originals / "soundboard" / "broken.wav").write_text("not audio")
    response = await web.client.post(
        "/api/v1/admin/scan", json={"guild": "4242", "normalize": False}, headers=admin
    )
    assert response.status == 200, await response.text()
    report = await response.json()
    assert sorted(report["added"]) == ["soundboard/g77/scan_two.wav", "soundboard/scan_one.wav"]
    assert [s["file"] for s in report["skipped"]] == ["soundboard/broken.wav"]
    assert report["deleted"] == [] and report["unchanged"] == 0
    sounds = {s.name: s for s in await web.services.sounds.list_all(all_guilds=True)}
    assert sounds["scan one"].guild_id == 4242 and sounds["scan two"].guild_id == 77
    # No body at all is fine too: nothing changed since.
    again = await (await web.client.post("/api/v1/admin/scan", headers=admin)).json()
    assert again["added"] == [] and again["unchanged"] == 2

    one = sounds["scan one"]
    response = await web.client.post("/api/v1/admin/normalize", json={"id": one.id}, headers=admin)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["total"], body["normalized"], body["skipped"], body["failed"]) == (1, 1, 0, 0)
    result = body["results"][0]
    assert result["id"] == one.id and result["status"] == "normalized" and result["error"] is None
    assert result["method"] and result["silent"] is False and result["duration_ms"] > 0
    assert (await web.services.sounds.get(one.id or 0)).is_normalized

    # Asked for by id once more: skipped, it is done already (unless forced).
    body = await (
        await web.client.post("/api/v1/admin/normalize", json={"id": one.id}, headers=admin)
    ).json()
    assert [(r["id"], r["status"]) for r in body["results"]] == [(one.id, "skipped")]
    # A type selects the SDB sounds not yet normalized.
    body = await (
        await web.client.post("/api/v1/admin/normalize", json={"type": "sdb"}, headers=admin)
    ).json()
    assert [(r["name"], r["status"]) for r in body["results"]] == [("scan two", "normalized")]
    body = await (
        await web.client.post(
            "/api/v1/admin/normalize",
            json={"all": True, "force": True, "one_pass": True},
            headers=admin,
        )
    ).json()
    assert body["normalized"] == 2 and body["failed"] == 0

    for payload in (
        {},
        {"all": False},
        {"all": True, "id": one.id},
        {"type": "MP3"},
        {"id": "1"},
        {"id": -4},
        {"all": True, "force": "yes"},
        {"all": True, "colour": "blue"},
    ):
        response = await web.client.post("/api/v1/admin/normalize", json=payload, headers=admin)
        await _error(response, 422, "invalid")
    response = await web.client.post("/api/v1/admin/normalize", json={"id": 10**9}, headers=admin)
    await _error(response, 404, "not_found")
    response = await web.client.post("/api/v1/admin/normalize", data=b"{nope", headers=admin)
    await _error(response, 400, "bad_request")
    response = await web.client.post("/api/v1/admin/scan", json={"guild": "x1"}, headers=admin)
    await _error(response, 422, "invalid")


# ----- extractions --------------------------------------------------------------------------


async def test_extractions_submit_list_and_get(web: Web) -> None:
    cost = web.services.settings.credits_extraction_cost
    assert cost > 0
    user = await make_user(web.services, credits=100, name="extractor")
    headers = await _token(web, user)
    # Not a member of the server (never used the bot there): refused, nothing charged.
    response = await web.client.post(
        "/api/v1/extractions",
        json={"url": "https://media.example.org/watch?v=abc", "guild": str(GUILD)},
        headers=headers,
    )
    body = await _error(response, 403, "forbidden")
    assert "where you have used the bot" in body["message"]
    await _used_guild(web, user)

    # An unsafe address is refused before anything is charged or queued.
    for url in ("http://127.0.0.1/secret.mp3", "http://localhost:8080/x", "file:///etc/passwd"):
        response = await web.client.post(
            "/api/v1/extractions", json={"url": url, "guild": str(GUILD)}, headers=headers
        )
        await _error(response, 422, "invalid")
    assert (await web.services.users.get(user.id or 0)).credits == 100
    listing = await (await web.client.get("/api/v1/extractions", headers=headers)).json()
    assert listing == {"items": [], "next_cursor": None}

    url = "https://media.example.org/watch?v=abc"
    started = time.monotonic()
    response = await web.client.post(
        "/api/v1/extractions",
        json={"url": url, "guild": str(GUILD), "name": "example clip"},
        headers=headers,
    )
    assert response.status == 202, await response.text()
    assert time.monotonic() - started < 5  # answered at once: nothing is fetched yet
    job = await response.json()
    assert job["status"] == "pending" and job["url"] == url and job["guild"] == str(GUILD)
    assert job["name"] == "example clip" and job["progress"] == 0 and job["reused"] is False
    assert job["sound_id"] is None and job["error"] is None and job["created_at"]
    assert (await web.services.users.get(user.id or 0)).credits == 100 - cost
    # The same link again: the queued job, charged once.
    again = await web.client.post(
        "/api/v1/extractions", json={"url": url, "guild": GUILD}, headers=headers
    )
    assert again.status == 202 and (await again.json())["id"] == job["id"]
    assert (await again.json())["reused"] is True
    assert (await web.services.users.get(user.id or 0)).credits == 100 - cost

    listing = await (await web.client.get("/api/v1/extractions", headers=headers)).json()
    assert [j["id"] for j in listing["items"]] == [job["id"]]
    one = await web.client.get(f"/api/v1/extractions/{job['id']}", headers=headers)
    assert one.status == 200 and (await one.json())["id"] == job["id"]

    # Others see nothing of it; only admins may list everyone's.
    other = await _token(web, await make_user(web.services, name="other"))
    await _error(
        await web.client.get(f"/api/v1/extractions/{job['id']}", headers=other), 404, "not_found"
    )
    theirs = await (await web.client.get("/api/v1/extractions", headers=other)).json()
    assert theirs["items"] == []
    await _error(await web.client.get("/api/v1/extractions?all=1", headers=other), 403, "forbidden")
    admin = await _admin_headers(web)
    everyone = await (await web.client.get("/api/v1/extractions?all=1", headers=admin)).json()
    assert job["id"] in [j["id"] for j in everyone["items"]]
    by_guild = await (
        await web.client.get(f"/api/v1/extractions?guild={GUILD}", headers=admin)
    ).json()
    assert [j["id"] for j in by_guild["items"]] == [job["id"]]
    assert (await web.client.get(f"/api/v1/extractions/{job['id']}", headers=admin)).status == 200
    for path, status, code in [
        ("/api/v1/extractions/999999999", 404, "not_found"),
        ("/api/v1/extractions/abc", 404, "not_found"),
        ("/api/v1/extractions?limit=0", 422, "invalid"),
        ("/api/v1/extractions?cursor=zzz", 400, "invalid_cursor"),
    ]:
        await _error(await web.client.get(path, headers=headers), status, code)


async def test_extraction_refusals(web: Web) -> None:
    cap = web.services.settings.extraction_max_queued_per_user
    cost = web.services.settings.credits_extraction_cost
    user = await make_user(web.services, credits=cost * (cap + 2))
    headers = await _token(web, user)
    await _used_guild(web, user)
    for n in range(cap):
        response = await web.client.post(
            "/api/v1/extractions",
            json={"url": f"https://media.example.org/v/{n}", "guild": str(GUILD)},
            headers=headers,
        )
        assert response.status == 202, await response.text()
    balance = (await web.services.users.get(user.id or 0)).credits
    response = await web.client.post(
        "/api/v1/extractions",
        json={"url": "https://media.example.org/v/one-too-many", "guild": str(GUILD)},
        headers=headers,
    )
    body = await _error(response, 409, "too_many_extractions")
    assert f"already have {cap} extractions waiting" in body["message"]
    assert (await web.services.users.get(user.id or 0)).credits == balance

    poor = await make_user(web.services, credits=cost - 1, name="poor")
    await _used_guild(web, poor)
    response = await web.client.post(
        "/api/v1/extractions",
        json={"url": "https://media.example.org/v/x", "guild": str(GUILD)},
        headers=await _token(web, poor),
    )
    body = await _error(response, 402, "insufficient_credits")
    assert body["balance"] == cost - 1 and body["needed"] == cost
    assert (await web.services.users.get(poor.id or 0)).credits == cost - 1

    for payload in (
        {"url": "https://media.example.org/v/y"},
        {"url": "https://media.example.org/v/y", "guild": "not-a-guild"},
        {"url": 5, "guild": str(GUILD)},
        {"url": "https://media.example.org/v/y", "guild": str(GUILD), "name": ["x"]},
        {"url": "https://media.example.org/v/y", "guild": str(GUILD), "extra": 1},
    ):
        response = await web.client.post("/api/v1/extractions", json=payload, headers=headers)
        await _error(response, 422, "invalid")
    response = await web.client.post("/api/v1/extractions", data=b"[1, 2]", headers=headers)
    await _error(response, 400, "bad_request")


# ----- play ---------------------------------------------------------------------------------


async def test_play_errors_without_a_bot(web: Web, tmp_path: Path) -> None:
    sound = await _add(web, tmp_path, "lonely", guild=GUILD)
    unlinked = await web.services.users.create(display_name="web only")
    response = await web.client.post(
        f"/api/v1/sounds/{sound.id}/play", headers=await _token(web, unlinked)
    )
    await _error(response, 409, "discord_not_linked")

    user = await make_user(web.services, credits=10)
    created = await web.services.accounts.create_token(user.id or 0, "hotkey")
    headers = {"Authorization": f"Bearer {created.plaintext}"}
    for path in ("/api/v1/sounds/999999999/play", "/api/v1/sounds/nope/play"):
        await _error(await web.client.post(path, headers=headers), 404, "not_found")

    # No bot process takes the request: a 409 after the (short) claim timeout, nothing charged.
    remote = web.services.remote_play
    remote.claim_timeout = 0.3
    started = time.monotonic()
    response = await web.client.post(f"/api/v1/sounds/{sound.id}/play", headers=headers)
    body = await _error(response, 409, "conflict")
    assert 0.25 < time.monotonic() - started < 3
    assert "voice channel" in body["message"] and "not running" in body["message"]
    assert remote.pending == 0
    assert (await web.services.users.get(user.id or 0)).credits == 10

    await web.services.accounts.revoke_token(user.id or 0, created.token.id or 0)
    response = await web.client.post(f"/api/v1/sounds/{sound.id}/play", headers=headers)
    await _error(response, 401, "invalid_token")


class StandInBot:
    """Answers PlayRequested on the bus the way the bot's remote cog does."""

    def __init__(self, web: Web, answer: dict[str, Any], *, claim: bool, delay: float = 0.0):
        self.web, self.answer, self.claim, self.delay = web, answer, claim, delay
        self.requests: list[PlayRequested] = []

    async def __call__(self, event: Event) -> None:
        if not isinstance(event, PlayRequested):
            return
        self.requests.append(event)
        events = self.web.services.events
        if self.claim:
            await events.publish(PlayClaimed(request_id=event.request_id, guild_id=GUILD))
        await asyncio.sleep(self.delay)
        await events.publish(PlayAnswered(request_id=event.request_id, **self.answer))


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"ok": False, "code": "not_in_voice", "message": "Join a voice channel."}, 409),
        ({"ok": False, "code": "insufficient_credits", "message": "Not enough credits."}, 402),
        ({"ok": False, "code": "queue_full", "message": "The queue is full."}, 409),
        ({"ok": False, "code": "player", "message": "I'm busy elsewhere."}, 409),
        ({"ok": False, "code": "not_found", "message": "That sound is gone."}, 404),
        ({"ok": True, "code": "queued", "message": "Queued.", "position": 2}, 200),
    ],
)
async def test_play_maps_the_bots_answer(
    web: Web, tmp_path: Path, answer: dict[str, Any], status: int
) -> None:
    sound = await _add(web, tmp_path, f"mapped {answer['code']}")
    user = await make_user(web.services)
    headers = await _token(web, user)
    web.services.remote_play.claim_timeout = 0.2
    bot = StandInBot(web, {**answer, "guild_id": GUILD, "balance_after": 41}, claim=True, delay=0.4)
    unsubscribe = web.services.events.subscribe(bot)
    try:
        response = await web.client.post(f"/api/v1/sounds/{sound.id}/play", headers=headers)
    finally:
        unsubscribe()
    # The request was claimed, so the answer after the claim timeout still counts.
    [request] = bot.requests
    assert (request.user_id, request.discord_id) == (user.id, user.discord_id)
    assert (request.sound_id, request.guild_id) == (sound.id, 0)  # 0: a global sound
    if status == 200:
        assert response.status == 200, await response.text()
        assert await response.json() == {
            "status": "queued",
            "position": 2,
            "balance_after": 41,
            "guild": str(GUILD),
            "message": "Queued.",
            "sound": {"id": sound.id, "name": sound.name},
        }
    else:
        body = await _error(response, status, answer["code"])
        assert body["message"] == answer["message"]
        if status == 402:
            assert body["balance"] == 41
    assert web.services.remote_play.pending == 0


async def test_a_claimed_play_that_never_answers(web: Web, tmp_path: Path) -> None:
    sound = await _add(web, tmp_path, "stuck")
    user = await make_user(web.services)
    remote = web.services.remote_play
    remote.claim_timeout, remote.timeout = 0.2, 0.6
    bot = StandInBot(web, {"ok": True, "code": "played", "message": ""}, claim=True, delay=5)
    unsubscribe = web.services.events.subscribe(bot)
    try:
        started = time.monotonic()
        response = await web.client.post(
            f"/api/v1/sounds/{sound.id}/play", headers=await _token(web, user)
        )
        body = await _error(response, 409, "conflict")
        assert 0.5 < time.monotonic() - started < 3
        assert "did not answer in time" in body["message"]
    finally:
        unsubscribe()


# ----- OpenAPI ------------------------------------------------------------------------------


async def test_openapi_describes_the_sound_endpoints(web: Web) -> None:
    spec = await (await web.client.get("/api/v1/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/sounds"]) == {"get"}
    assert set(paths["/extractions"]) == {"get", "post"}
    play = paths["/sounds/{id}/play"]["post"]
    assert play["tags"] == ["sounds"] and "voice channel" in play["description"]
    assert play["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PlayResult"
    }
    assert {"402", "404", "409"} <= set(play["responses"])
    submit = paths["/extractions"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExtractionRequest"
    }
    assert "202" in submit["responses"] and "too_many_extractions" in submit["description"]
    operation_ids = []
    for path, methods in paths.items():
        declared = set(re.findall(r"{(\w+)}", path))
        for operation in methods.values():
            operation_ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"]
            in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert in_path == declared, path
            assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path")
    assert len(operation_ids) == len(set(operation_ids))
    schemas = spec["components"]["schemas"]
    for name in ("Sound", "SoundPage", "PlayResult", "Extraction", "NormalizeReport"):
        assert name in schemas

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    assert all(r.removeprefix("#/components/schemas/") in schemas for r in refs(spec))
