"""One place turns failures into answers: JSON under /api/, pages (or a flash) elsewhere."""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from core.errors import SoundboardError
from core.repositories.base import InvalidCursor
from web.api import (
    API_PREFIX,
    STATUS_BY_CODE,
    ApiError,
    error_response,
    from_domain,
    from_http,
)
from web.context import flash, render
from web.oauth import OAuthFailed
from web.security import safe_next

log = logging.getLogger(__name__)

FRIENDLY = {
    401: "Please sign in first.",
    403: "You are not allowed to do that.",
    404: "There is nothing here. The link may be old, or mistyped.",
    405: "That does not work this way (wrong HTTP method).",
    413: "That is too large.",
    500: "Something went wrong on our side. It has been logged; please try again.",
}
CSRF_MESSAGE = (
    "This form has expired or was sent from another site. Go back, reload the page and try again."
)


def _is_api(request: web.Request) -> bool:
    return request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/")


def _message(exc: web.HTTPException) -> str:
    if exc.reason == "CSRF":
        return CSRF_MESSAGE
    default = HTTPStatus(exc.status).phrase if exc.status in HTTPStatus._value2member_map_ else ""
    if exc.reason and exc.reason != default:
        return exc.reason
    return FRIENDLY.get(exc.status, default or "That did not work.")


async def error_page(request: web.Request, status: int, message: str) -> web.Response:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    context = {"status": status, "title": title, "message": message}
    try:
        return await render(request, "error.html", context, status=status)
    except Exception:  # the page itself failed (the database is down, say): plain text
        log.exception("error page failed status=%s", status)
        response = aiohttp_jinja2.render_template("error.html", request, context)
        response.set_status(status)
        return response


def _back(request: web.Request) -> str:
    """Where a failed form goes back to: the page it came from, when that page is ours."""
    referer = request.headers.get("Referer", "")
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc != request.host:
        return "/"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return safe_next(path, "/")


@web.middleware
async def handle_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if _is_api(request):
            return error_response(from_http(exc))
        return await error_page(request, exc.status, _message(exc))
    except SoundboardError as exc:
        if _is_api(request):
            return error_response(from_domain(exc))
        if request.method == "POST":
            await flash(request, str(exc), "error")
            raise web.HTTPSeeOther(_back(request)) from None
        return await error_page(request, STATUS_BY_CODE.get(exc.code, 400), str(exc))
    except InvalidCursor:
        message = "This page link is not valid any more (bad cursor). Start from the first page."
        if _is_api(request):
            return error_response(ApiError(400, "invalid_cursor", message))
        return await error_page(request, 400, message)
    except OAuthFailed as exc:
        return await error_page(request, exc.status, str(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _is_api(request):
            return error_response(ApiError(500, "internal", FRIENDLY[500]))
        return await error_page(request, 500, FRIENDLY[500])
