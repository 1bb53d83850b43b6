"""/api/v1: the signed-in member and their ledger, and the API's own OpenAPI description."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.models import UserOAuth
from core.repositories.base import Page
from core.repositories.ledger import LedgerEntry
from core.services.users import UserSummary
from web.api import NO_STORE, ApiRoutes, api_user, json_body_response, json_ok
from web.keys import OPENAPI, PAGE_CACHE, SERVICES
from web.ledger_view import ACTIONS, DEFAULT_PAGE_SIZE, LedgerFilter

routes = ApiRoutes(tag="account")

routes.schemas.update(
    {
        "Plan": {
            "type": "object",
            "required": ["code", "name", "credits_per_refill", "max_credits"],
            "properties": {
                "code": {"type": "string", "example": "free"},
                "name": {"type": "string", "example": "Free"},
                "credits_per_refill": {"type": "integer"},
                "max_credits": {"type": "integer"},
                "refill_period_hours": {"type": "integer"},
            },
        },
        "Me": {
            "type": "object",
            "required": ["id", "display_name", "role", "credits", "plan", "next_refill_at"],
            "properties": {
                "id": {"type": "integer"},
                "display_name": {"type": "string"},
                "avatar_url": {"type": ["string", "null"]},
                "discord_id": {
                    "type": ["string", "null"],
                    "description": "A Discord snowflake, as a string (64-bit).",
                },
                "role": {"type": "string", "enum": ["user", "admin"]},
                "credits": {"type": "integer"},
                "plan": {"$ref": "#/components/schemas/Plan"},
                "next_refill_at": {"type": "string", "format": "date-time"},
                "created_at": {"type": "string", "format": "date-time"},
                "identities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "provider": {"type": "string"},
                            "username": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "Transaction": {
            "type": "object",
            "required": ["id", "action", "amount", "balance_before", "balance_after"],
            "properties": {
                "id": {"type": "integer"},
                "action": {"type": "string", "examples": list(ACTIONS)},
                "amount": {"type": "integer", "description": "Negative when spent."},
                "balance_before": {"type": "integer"},
                "balance_after": {"type": "integer"},
                "metadata": {"type": "object"},
                "success": {"type": "boolean"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "TransactionPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for the next (older) page; null at the end.",
                },
            },
        },
    }
)


def _me(summary: UserSummary, identities: list[UserOAuth]) -> dict[str, Any]:
    user, plan = summary.user, summary.plan
    return {
        "id": user.id,
        "display_name": user.display_name,
        "avatar_url": user.avatar_url,
        "discord_id": str(user.discord_id) if user.discord_id is not None else None,
        "role": str(user.role),
        "credits": user.credits,
        "plan": {
            "code": plan.code,
            "name": plan.name,
            "credits_per_refill": plan.credits_per_refill,
            "max_credits": plan.max_credits,
            "refill_period_hours": plan.refill_period_hours,
        },
        "next_refill_at": summary.next_refill_at.isoformat(),
        "created_at": user.created_at.isoformat(),
        "identities": [{"provider": i.provider, "username": i.username} for i in identities],
    }


@routes.get("/me", summary="The authenticated member", responses={200: "Me", 401: None})
async def me(request: web.Request) -> web.Response:
    user = api_user(request)
    services = request.config_dict[SERVICES]
    summary = await services.users.summary(user.id or 0)
    identities = await services.accounts.list_identities(user.id or 0)
    return json_ok(_me(summary, identities))


TRANSACTION_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "The `next_cursor` of the previous page.",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": DEFAULT_PAGE_SIZE},
    },
    {"name": "action", "in": "query", "schema": {"type": "string", "examples": list(ACTIONS)}},
    {
        "name": "since",
        "in": "query",
        "schema": {"type": "string"},
        "description": "From this date (2026-01-31) or time (ISO 8601), inclusive.",
    },
    {
        "name": "until",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Up to this date (whole day, inclusive) or time (exclusive).",
    },
]


@routes.get(
    "/credits/transactions",
    summary="The member's ledger, newest first",
    description=(
        "Keyset pagination: pages stay stable while new transactions arrive. A page reached "
        "through a cursor never changes; it carries an ETag and may be cached."
    ),
    parameters=TRANSACTION_PARAMETERS,
    responses={200: "TransactionPage", 400: None, 401: None, 422: None, 429: None},
)
async def transactions(request: web.Request) -> web.Response:
    user = api_user(request)
    ledger_filter = LedgerFilter.from_query(request.query)
    if ledger_filter.cursor is None:  # the newest page changes with every transaction
        body = await _transactions_body(request, user.id or 0, ledger_filter)
        return json_body_response(body, headers=NO_STORE)
    key = (user.id, *ledger_filter.params().items())
    cache = request.config_dict[PAGE_CACHE]
    cached = cache.get(key)
    if cached is None:
        body = await _transactions_body(request, user.id or 0, ledger_filter)
        cached = cache.put(key, body)
    headers = {"ETag": cached.etag, "Cache-Control": f"private, max-age={int(cache.ttl)}"}
    if request.headers.get("If-None-Match") == cached.etag:
        return web.Response(status=304, headers=headers)
    return json_body_response(cached.body, headers=headers)


async def _transactions_body(
    request: web.Request, user_id: int, ledger_filter: LedgerFilter
) -> bytes:
    page = await request.config_dict[SERVICES].credits.history_entries(
        user_id,
        cursor=ledger_filter.cursor,
        limit=ledger_filter.limit,
        action=ledger_filter.action,
        since=ledger_filter.since,
        until=ledger_filter.until,
    )
    return transaction_page_json(page)


def transaction_page_json(page: Page[LedgerEntry]) -> bytes:
    """A TransactionPage: the fields and values of core.services.credits.transaction_dict,
    written straight from the row values. The stored metadata JSON is embedded as it is (not
    parsed and re-encoded); orjson writes created_at as isoformat() does."""
    items = [
        {
            "id": entry.id,
            "action": entry.action,
            "amount": entry.amount,
            "balance_before": entry.balance_before,
            "balance_after": entry.balance_after,
            "metadata": (
                None if entry.metadata_json is None else orjson.Fragment(entry.metadata_json)
            ),
            "success": entry.success,
            "created_at": entry.created_at,
        }
        for entry in page.items
    ]
    return orjson.dumps({"items": items, "next_cursor": page.next_cursor})


@routes.get(
    "/openapi.json",
    summary="This description",
    responses={200: None},
    public=True,
)
async def openapi(request: web.Request) -> web.Response:
    return json_ok(request.config_dict[OPENAPI])
