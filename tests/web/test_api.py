"""/api/v1: authentication, the ledger endpoint, errors, rate limits and OpenAPI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, null

from core.errors import (
    Conflict,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    PermissionDenied,
    SoundboardError,
)
from core.models import CreditTransaction, User, utcnow
from core.services.credits import transaction_dict
from tests.core.helpers import make_user
from tests.web.conftest import Web, WebFactory
from web.api import from_domain, json_bytes


async def _token(web: Web, user: User, name: str = "test") -> dict[str, str]:
    created = await web.services.accounts.create_token(user.id or 0, name)
    return {"Authorization": f"Bearer {created.plaintext}"}


async def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"]["code"] == code and body["error"]["status"] == status
    assert body["error"]["message"]
    return dict(body["error"])


async def test_me_with_a_token(web: Web) -> None:
    user = await make_user(web.services, credits=77, name="token user")
    response = await web.client.get("/api/v1/me", headers=await _token(web, user))
    assert response.status == 200
    me = await response.json()
    assert me["id"] == user.id and me["credits"] == 77 and me["display_name"] == "token user"
    assert me["discord_id"] == str(user.discord_id)
    assert me["plan"]["code"] == "free" and me["next_refill_at"].endswith("+00:00")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["RateLimit-Limit"] == "120"


async def test_me_with_the_session_cookie(web: Web) -> None:
    user = await web.login("discord")
    me = await (await web.client.get("/api/v1/me")).json()
    assert me["id"] == user.id


async def test_missing_malformed_unknown_and_revoked_tokens(web: Web) -> None:
    body = await _error(await web.client.get("/api/v1/me"), 401, "unauthorized")
    assert "Bearer" in body["message"]
    for header in ("Basic dXNlcjpwYXNz", "Bearer ", "Token abc"):
        response = await web.client.get("/api/v1/me", headers={"Authorization": header})
        await _error(response, 401, "unauthorized")
    unknown = {"Authorization": "Bearer sb_" + "A" * 43}
    response = await web.client.get("/api/v1/me", headers=unknown)
    await _error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    user = await make_user(web.services)
    created = await web.services.accounts.create_token(user.id or 0, "soon revoked")
    headers = {"Authorization": f"Bearer {created.plaintext}"}
    assert (await web.client.get("/api/v1/me", headers=headers)).status == 200
    await web.services.accounts.revoke_token(user.id or 0, created.token.id or 0)
    await _error(await web.client.get("/api/v1/me", headers=headers), 401, "invalid_token")
    path = "/api/v1/credits/transactions"
    await _error(await web.client.get(path, headers=headers), 401, "invalid_token")


async def test_transactions_paginate_with_a_stable_cursor(web: Web) -> None:
    user = await make_user(web.services, credits=100)
    for index in range(12):
        await web.services.credits.deduct(user.id or 0, 1, meta={"n": index})
    headers = await _token(web, user)
    path = "/api/v1/credits/transactions"
    first = await (await web.client.get(f"{path}?limit=5", headers=headers)).json()
    assert [t["amount"] for t in first["items"]] == [-1] * 5
    assert first["items"][0]["metadata"] == {"n": 11}
    cursor = first["next_cursor"]
    second = await (await web.client.get(f"{path}?limit=5&cursor={cursor}", headers=headers)).json()
    await web.services.credits.deduct(user.id or 0, 1)  # a new row arrives
    again = await (await web.client.get(f"{path}?limit=5&cursor={cursor}", headers=headers)).json()
    assert again == second
    ids: list[int] = []
    next_cursor: str | None = None
    while True:
        query = f"?limit=4&cursor={next_cursor}" if next_cursor else "?limit=4"
        page = await (await web.client.get(path + query, headers=headers)).json()
        ids += [t["id"] for t in page["items"]]
        next_cursor = page["next_cursor"]
        if next_cursor is None:
            break
    # The signup row and 13 plays, newest first, each exactly once.
    assert len(ids) == 14 and ids == sorted(ids, reverse=True) and len(set(ids)) == 14


async def test_transactions_filter_by_action_and_time(web: Web) -> None:
    user = await make_user(web.services, credits=50)
    await web.services.credits.deduct(user.id or 0, 2, action="extraction")
    await web.services.credits.deduct(user.id or 0, 1)
    headers = await _token(web, user)
    path = "/api/v1/credits/transactions"
    body = await (await web.client.get(f"{path}?action=extraction", headers=headers)).json()
    assert [(t["action"], t["amount"]) for t in body["items"]] == [("extraction", -2)]
    today = utcnow().date().isoformat()
    body = await (await web.client.get(f"{path}?since={today}", headers=headers)).json()
    assert len(body["items"]) == 4
    body = await (await web.client.get(f"{path}?until=2000-01-01", headers=headers)).json()
    assert body == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("cursor=not-ours", 400, "invalid_cursor"),
        ("cursor=aWQ6eA", 400, "invalid_cursor"),
        ("limit=0", 422, "invalid"),
        ("limit=201", 422, "invalid"),
        ("limit=ten", 422, "invalid"),
        ("action=Robert%27)%3B", 422, "invalid"),
        ("since=last-week", 422, "invalid"),
        ("since=2026-02-01&until=2026-01-01", 422, "invalid"),
    ],
)
async def test_transaction_parameter_errors(web: Web, query: str, status: int, code: str) -> None:
    user = await make_user(web.services)
    response = await web.client.get(
        f"/api/v1/credits/transactions?{query}", headers=await _token(web, user)
    )
    await _error(response, status, code)


async def test_a_token_only_sees_its_own_ledger(web: Web) -> None:
    alice = await make_user(web.services, credits=10, name="alice")
    bob = await make_user(web.services, credits=20, name="bob")
    await web.services.credits.deduct(bob.id or 0, 5, meta={"secret": "bob's"})
    path = "/api/v1/credits/transactions?limit=200"
    body = await (await web.client.get(path, headers=await _token(web, alice))).json()
    assert {t["balance_after"] for t in body["items"]} <= {10, 100}
    assert all("secret" not in t["metadata"] for t in body["items"])
    me = await (await web.client.get("/api/v1/me", headers=await _token(web, alice))).json()
    assert me["id"] == alice.id


async def test_rate_limit_per_token_with_retry_after(web_factory: WebFactory) -> None:
    web = await web_factory(api_rate_limit_per_minute=3)
    user = await make_user(web.services)
    first, second = await _token(web, user, "one"), await _token(web, user, "two")
    remaining = []
    for _ in range(3):
        response = await web.client.get("/api/v1/me", headers=first)
        assert response.status == 200
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    limited = await web.client.get("/api/v1/me", headers=first)
    body = await _error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1 and body["retry_after"] >= 1
    assert "3 a minute" in body["message"]
    # Another token of the same user has its own budget.
    assert (await web.client.get("/api/v1/me", headers=second)).status == 200
    # The OpenAPI description is never limited.
    for _ in range(5):
        assert (await web.client.get("/api/v1/openapi.json")).status == 200


async def test_unknown_endpoint_and_wrong_method_are_json(web: Web) -> None:
    user = await make_user(web.services)
    headers = await _token(web, user)
    await _error(await web.client.get("/api/v1/nope", headers=headers), 404, "not_found")
    response = await web.client.post("/api/v1/me", headers=headers)
    await _error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_session_writes_to_the_api_need_the_csrf_header(web: Web) -> None:
    await web.login("discord")
    refused = await web.client.post("/api/v1/me")
    await _error(refused, 403, "forbidden")
    token = await web.csrf()
    allowed = await web.client.post("/api/v1/me", headers={"X-CSRF-Token": token})
    await _error(allowed, 405, "method_not_allowed")  # past CSRF: only the method is wrong


def test_domain_errors_map_to_statuses() -> None:
    cases: list[tuple[SoundboardError, int, str]] = [
        (NotFound("x"), 404, "not_found"),
        (Conflict("x"), 409, "conflict"),
        (InvalidInput("x"), 422, "invalid"),
        (PermissionDenied("x"), 403, "forbidden"),
        (SoundboardError("x"), 400, "error"),
    ]
    for exc, status, code in cases:
        api_error = from_domain(exc)
        assert (api_error.status, api_error.code, api_error.message) == (status, code, "x")
    short = from_domain(InsufficientCredits(balance=1, needed=3, next_refill_at=utcnow()))
    assert (short.status, short.code) == (402, "insufficient_credits")
    assert short.fields["balance"] == 1 and short.fields["needed"] == 3
    assert short.fields["next_refill_at"].endswith("+00:00")


async def test_openapi_describes_the_api(web: Web) -> None:
    response = await web.client.get("/api/v1/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [{"url": f"{web.base_url}/api/v1"}]
    assert set(spec["paths"]) == {
        "/me",
        "/credits/transactions",
        "/openapi.json",
        "/sounds",
        "/sounds/{id}/play",
        "/admin/scan",
        "/admin/normalize",
        "/extractions",
        "/extractions/{id}",
    }
    listing = spec["paths"]["/credits/transactions"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "cursor",
        "limit",
        "action",
        "since",
        "until",
    }
    ok_schema = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema == {"$ref": "#/components/schemas/TransactionPage"}
    assert listing["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert spec["paths"]["/openapi.json"]["get"]["security"] == []
    for name in ("Error", "Me", "Plan", "Transaction", "TransactionPage"):
        assert name in spec["components"]["schemas"]
    refs = _refs(spec)
    assert refs and all(
        r.removeprefix("#/components/schemas/") in spec["components"]["schemas"] for r in refs
    )
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_pages_behind_a_cursor_carry_an_etag(web: Web) -> None:
    user = await make_user(web.services, credits=100)
    for _ in range(6):
        await web.services.credits.deduct(user.id or 0, 1)
    headers = await _token(web, user)
    path = "/api/v1/credits/transactions?limit=3"
    first = await web.client.get(path, headers=headers)
    assert "ETag" not in first.headers and first.headers["Cache-Control"] == "no-store"
    cursor = (await first.json())["next_cursor"]
    older = await web.client.get(f"{path}&cursor={cursor}", headers=headers)
    etag = older.headers["ETag"]
    assert older.headers["Cache-Control"].startswith("private, max-age=")
    body = await older.json()
    await web.services.credits.deduct(user.id or 0, 1)
    again = await web.client.get(f"{path}&cursor={cursor}", headers=headers)
    assert again.headers["ETag"] == etag and await again.json() == body
    revalidated = await web.client.get(
        f"{path}&cursor={cursor}", headers={**headers, "If-None-Match": etag}
    )
    assert revalidated.status == 304 and await revalidated.read() == b""
    # Another member asking for the same cursor gets their own (empty) page, not this one.
    other = await make_user(web.services)
    theirs = await web.client.get(f"{path}&cursor={cursor}", headers=await _token(web, other))
    assert theirs.headers["ETag"] != etag
    assert all(
        t["id"] not in {i["id"] for i in body["items"]} for t in (await theirs.json())["items"]
    )


async def test_transaction_items_carry_what_the_ledger_rows_hold(web: Web) -> None:
    user = await make_user(web.services, credits=30)
    uid = user.id or 0
    await web.services.credits.deduct(uid, 2, meta={"sound": "Grüße ✓", "n": [1, 2.5, None]})
    await web.services.credits.grant(uid, 1, reason="test", actor=None)
    async with web.services.db.transaction() as session:
        await session.execute(
            insert(CreditTransaction).values(
                user_id=uid,
                action="refund",
                amount=0,
                balance_before=29,
                balance_after=29,
                meta=null(),
                success=False,
                created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no fraction of a second
            )
        )
    headers = await _token(web, user)
    response = await web.client.get("/api/v1/credits/transactions?limit=2", headers=headers)
    assert response.status == 200 and response.content_type == "application/json"
    assert response.charset == "utf-8"
    page = await response.json()
    items = page["items"]
    while page["next_cursor"]:
        older = await web.client.get(
            f"/api/v1/credits/transactions?limit=2&cursor={page['next_cursor']}", headers=headers
        )
        assert older.content_type == "application/json" and "ETag" in older.headers
        page = await older.json()
        items += page["items"]
    rows = (await web.services.credits.history(uid, limit=10)).items
    assert len(rows) == 5
    # The same fields and values as the ledger's own dictionaries (the live stream, the CLI).
    assert items == [transaction_dict(row) for row in rows]
    assert [i["metadata"] for i in items][:2] == [None, {"reason": "test", "actor": None}]
    assert items[0]["created_at"] == "2026-01-02T03:04:05+00:00" and items[0]["success"] is False


def test_json_bytes_matches_the_json_module_where_orjson_differs() -> None:
    for value in ({1: "a", "b": [True, None]}, {"big": 2**70}, {"text": "\ud800"}, {"x": 1.5}):
        assert json.loads(json_bytes(value)) == json.loads(json.dumps(value))
    assert json_bytes({"a": "Grüße"}) == '{"a":"Grüße"}'.encode()
