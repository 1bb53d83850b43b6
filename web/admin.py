"""Administration: users with balances, grant/take credits with a reason, change plans."""

from __future__ import annotations

from aiohttp import web

from core.errors import InvalidInput, NotFound
from core.models import User
from core.services.container import Services
from web.context import flash, redirect, render, require_admin
from web.keys import SERVICES
from web.ledger_view import parse_limit, row_view

routes = web.RouteTableDef()

MAX_ADJUSTMENT = 1_000_000
MAX_REASON = 200


def _services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


def _user_id(request: web.Request) -> int:
    try:
        return int(request.match_info["user_id"])
    except ValueError:
        raise web.HTTPNotFound() from None


def _actor(admin: User) -> str:
    return f"web:{admin.id}:{admin.display_name}"


@routes.get("/admin", name="admin")
async def admin_users(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    find = request.query.get("find", "").strip()
    if find:
        raise redirect(f"/admin/users/{await _find(request, find)}")
    services = _services(request)
    page = await services.users.list_page(
        cursor=request.query.get("cursor") or None, limit=parse_limit(request.query.get("limit"))
    )
    plans = {plan.id: plan for plan in await services.users.list_plans()}
    context = {
        "page": page,
        "plans": plans,
        "cursor": request.query.get("cursor"),
        "active": "admin",
    }
    return await render(request, "admin.html", context)


async def _find(request: web.Request, text: str) -> int:
    """A user id, or a Discord id, to a user id."""
    if not text.isdigit():
        raise InvalidInput("Search by user id or Discord id (digits only).")
    services = _services(request)
    number = int(text)
    if number < 2**31:
        try:
            return (await services.users.get(number)).id or 0
        except NotFound:
            pass
    return (await services.users.get_by_discord_id(number)).id or 0


@routes.get("/admin/users/{user_id}", name="admin_user")
async def admin_user(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    services = _services(request)
    summary = await services.users.summary(_user_id(request))
    history = await services.credits.history(summary.user.id or 0, limit=20)
    context = {
        "member": summary.user,
        "summary": summary,
        "plans": await services.users.list_plans(),
        "identities": await services.accounts.list_identities(summary.user.id or 0),
        "rows": [row_view(row) for row in history.items],
        "active": "admin",
    }
    return await render(request, "admin_user.html", context)


@routes.post("/admin/users/{user_id}/credits", name="admin_credits")
async def admin_credits(request: web.Request) -> web.StreamResponse:
    admin = await require_admin(request)
    user_id = _user_id(request)
    form = await request.post()
    amount, reason = _amount(str(form.get("amount", ""))), str(form.get("reason", "")).strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidInput(f"Give a reason of 1 to {MAX_REASON} characters; it goes in the ledger.")
    credits = _services(request).credits
    if form.get("direction") == "take":
        row = await credits.take(user_id, amount, reason=reason, actor=_actor(admin))
    else:
        row = await credits.grant(user_id, amount, reason=reason, actor=_actor(admin))
    verb = "Took" if row.amount < 0 else "Granted"
    await flash(
        request, f"{verb} {abs(row.amount)} credits. Balance: {row.balance_after}.", "success"
    )
    raise redirect(f"/admin/users/{user_id}")


def _amount(raw: str) -> int:
    try:
        amount = int(raw.strip())
    except ValueError:
        raise InvalidInput("The amount must be a whole number of credits.") from None
    if not 1 <= amount <= MAX_ADJUSTMENT:
        raise InvalidInput(f"The amount must be between 1 and {MAX_ADJUSTMENT:,}.")
    return amount


@routes.post("/admin/users/{user_id}/plan", name="admin_plan")
async def admin_plan(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    user_id = _user_id(request)
    form = await request.post()
    plan_code = str(form.get("plan", ""))
    await _services(request).users.set_plan(user_id, plan_code)
    await flash(request, f"The plan is now {plan_code}.", "success")
    raise redirect(f"/admin/users/{user_id}")
