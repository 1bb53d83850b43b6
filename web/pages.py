"""The member's pages: account (identities, API tokens) and credits (history, charts, CSV)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_session import get_session

from core.errors import InvalidInput
from core.models import CreditTransaction, utcnow
from core.repositories.base import MAX_PAGE_SIZE, Page
from core.services.container import Services
from core.services.users import UserSummary
from web.charts import balance_chart, spending_chart
from web.context import flash, redirect, render, require_user
from web.keys import PLANS, PROVIDERS, SERVICES
from web.ledger_view import ACTIONS, LedgerFilter, action_label, ledger_page, row_view

routes = web.RouteTableDef()

CSV_COLUMNS = ["id", "time_utc", "action", "amount", "balance_before", "balance_after", "details"]


def _services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _int_path(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None


@routes.get("/account", name="account")
async def account(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    services = _services(request)
    summary = await request.config_dict[PLANS].summary(user)
    identities = await services.accounts.list_identities(user.id or 0)
    linked = {i.provider for i in identities}
    providers = request.config_dict[PROVIDERS].providers
    new_token = (await get_session(request)).pop("new_token", None)
    context = {
        "summary": summary,
        "identities": identities,
        "provider_labels": {name: p.label for name, p in providers.items()},
        "linkable": [p for name, p in providers.items() if name not in linked],
        "tokens": await services.accounts.list_tokens(user.id or 0),
        "new_token": new_token if isinstance(new_token, dict) else None,
        "active": "account",
    }
    return await render(request, "account.html", context)


@routes.post("/account/tokens", name="token_create")
async def token_create(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    form = await _form(request)
    try:
        created = await _services(request).accounts.create_token(user.id or 0, form.get("name", ""))
    except InvalidInput as exc:
        await flash(request, str(exc), "error")
    else:
        session = await get_session(request)
        session["new_token"] = {"name": created.token.name, "value": created.plaintext}
    raise redirect("/account#tokens")


@routes.post("/account/tokens/{token_id}/revoke", name="token_revoke")
async def token_revoke(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    token = await _services(request).accounts.revoke_token(
        user.id or 0, _int_path(request, "token_id")
    )
    await flash(request, f"The token “{token.name}” is revoked and no longer works.", "success")
    raise redirect("/account#tokens")


@routes.post("/account/identities/{identity_id}/unlink", name="identity_unlink")
async def identity_unlink(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    try:
        await _services(request).accounts.unlink_identity(
            user.id or 0, _int_path(request, "identity_id")
        )
    except InvalidInput as exc:
        await flash(request, str(exc), "error")
    else:
        await flash(request, "That sign-in method was removed from your account.", "success")
    raise redirect("/account#identities")


@routes.get("/credits", name="credits")
async def credits(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    ledger_filter = LedgerFilter.from_query(request.query)
    page = await ledger_page(_services(request).credits, user.id or 0, ledger_filter)
    summary = await request.config_dict[PLANS].summary(user)
    return await render(request, "credits.html", _credits_context(summary, page, ledger_filter))


def _credits_context(
    summary: UserSummary, page: Page[CreditTransaction], ledger_filter: LedgerFilter
) -> dict[str, Any]:
    next_query = ledger_filter.query(cursor=page.next_cursor) if page.next_cursor else None
    return {
        "summary": summary,
        "rows": [row_view(row) for row in page.items],
        "filter": ledger_filter,
        "next_query": next_query,
        "chart_query": ledger_filter.query(cursor=None, limit=50),
        "actions": [(a, action_label(a)) for a in ACTIONS],
        # Only the newest page, not cut off at an end date, takes new rows live.
        "live": ledger_filter.cursor is None and ledger_filter.until is None,
        "active": "credits",
    }


async def _chart_range(
    request: web.Request, user_id: int, ledger_filter: LedgerFilter
) -> tuple[datetime, datetime]:
    first = None
    if ledger_filter.since is None:
        first = await _services(request).accounts.first_activity(user_id)
    return ledger_filter.chart_range(utcnow(), first)


@routes.get("/credits/balance.svg", name="chart_balance")
async def chart_balance(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    ledger_filter = LedgerFilter.from_query(request.query)
    since, until = await _chart_range(request, user.id or 0, ledger_filter)
    points = await _services(request).accounts.balance_series(
        user.id or 0, since=since, until=until
    )
    return _svg(balance_chart(points, since, until))


@routes.get("/credits/spending.svg", name="chart_spending")
async def chart_spending(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    ledger_filter = LedgerFilter.from_query(request.query)
    since, until = await _chart_range(request, user.id or 0, ledger_filter)
    spending = await _services(request).accounts.spending_by_action(
        user.id or 0, since=since, until=until, action=ledger_filter.action
    )
    return _svg(spending_chart(spending, since, until))


# A chart styles itself (light and dark) and runs nothing.
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def _svg(text: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, max-age=15", "Content-Security-Policy": SVG_POLICY},
    )


@routes.get("/credits.csv", name="credits_csv")
async def credits_csv(request: web.Request) -> web.StreamResponse:
    user = await require_user(request)
    ledger_filter = LedgerFilter.from_query(request.query)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="credits-{utcnow():%Y%m%d-%H%M}.csv"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    async for chunk in _csv_chunks(_services(request), user.id or 0, ledger_filter):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _csv_chunks(
    services: Services, user_id: int, ledger_filter: LedgerFilter
) -> AsyncIterator[bytes]:
    """The header, then every matching row, newest first, a page at a time."""
    yield _csv_text([CSV_COLUMNS]).encode()
    position = replace(ledger_filter, cursor=None)
    while True:
        page = await ledger_page(services.credits, user_id, position, limit=MAX_PAGE_SIZE)
        yield _csv_text([_csv_row(row) for row in page.items]).encode()
        if page.next_cursor is None:
            return
        position = replace(position, cursor=page.next_cursor)


def _csv_row(row: Any) -> list[str]:
    return [
        str(row.id),
        row.created_at.isoformat(),
        row.action,
        str(row.amount),
        str(row.balance_before),
        str(row.balance_after),
        json.dumps(row.meta or {}, ensure_ascii=False, sort_keys=True),
    ]


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([[_cell(v) for v in r] for r in rows])
    return buffer.getvalue()


def _cell(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; numbers are left alone."""
    if value[:1] in ("=", "+", "-", "@") and not value.lstrip("+-").isdigit():
        return "'" + value
    return value
