"""What page handlers share: the signed-in user, flash messages and template rendering."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, new_session

from core.errors import NotFound
from core.models import Role, User
from web.keys import SERVICES, USER
from web.security import csrf_token, safe_next

FLASH_KEY = "flash"
MAX_FLASHES = 5
# The session cookie is re-issued at most this often, so its expiry slides while in use.
SESSION_REFRESH_SECONDS = 24 * 3600


async def current_user(request: web.Request) -> User | None:
    """The signed-in user, from the session (loaded once per request)."""
    if USER in request:
        return request[USER]
    session = await get_session(request)
    user_id = session.get("uid")
    if not isinstance(user_id, int):
        return None
    try:
        user = await request.config_dict[SERVICES].users.get(user_id)
    except NotFound:
        session.invalidate()  # the account is gone
        return None
    seen = session.get("seen")
    if not isinstance(seen, int | float) or time.time() - seen > SESSION_REFRESH_SECONDS:
        session["seen"] = int(time.time())
    request[USER] = user
    return user


def sign_in_url(request: web.Request) -> str:
    return "/?" + urlencode({"next": request.path_qs})


async def require_user(request: web.Request) -> User:
    """The signed-in user, or a redirect to the sign-in page that comes back here."""
    user = await current_user(request)
    if user is None:
        raise web.HTTPSeeOther(sign_in_url(request))
    return user


async def require_admin(request: web.Request) -> User:
    user = await require_user(request)
    if user.role != Role.ADMIN:
        raise web.HTTPForbidden(reason="Only administrators can open this page.")
    return user


async def start_session(request: web.Request, user: User) -> Session:
    """A brand-new session for a fresh sign-in: nothing from before survives (no fixation)."""
    session = await new_session(request)
    session["uid"] = user.id
    session["at"] = int(time.time())
    session["seen"] = int(time.time())
    csrf_token(session)
    request[USER] = user
    return session


async def flash(request: web.Request, text: str, kind: str = "info") -> None:
    session = await get_session(request)
    messages = list(session.get(FLASH_KEY) or [])[-(MAX_FLASHES - 1) :]
    messages.append({"kind": kind, "text": text})
    session[FLASH_KEY] = messages


async def pop_flashes(request: web.Request) -> list[dict[str, str]]:
    session = await get_session(request)
    messages = session.pop(FLASH_KEY, None)
    return list(messages) if isinstance(messages, list) else []


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(safe_next(location, "/"))


async def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """Render a page with what every page needs: the user, CSRF token, flashes, nav state."""
    session = await get_session(request)
    base = {
        "user": await current_user(request),
        "csrf": csrf_token(session),
        "flashes": await pop_flashes(request),
        "path": request.path,
    }
    response = aiohttp_jinja2.render_template(template, request, {**base, **context})
    response.set_status(status)
    return response
