"""The JSON API's machinery: routes that carry their OpenAPI description, authentication
(session cookie or `Authorization: Bearer <token>`), per-token rate limits and JSON errors.

Adding endpoints (for instance web/api_sounds.py):

    from web.api import ApiRoutes, api_user, json_ok
    routes = ApiRoutes(tag="sounds")

    @routes.get("/sounds", summary="List sounds", responses={200: "SoundPage"})
    async def list_sounds(request: web.Request) -> web.Response:
        user = api_user(request)
        ...

then add "web.api_sounds" to API_MODULES in web/app.py. Raise core.errors (NotFound,
Conflict, InvalidInput, PermissionDenied, InsufficientCredits) or ApiError; the error
middleware turns them into JSON with a stable code and the right status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from core.errors import SoundboardError
from core.models import Role, User
from web.context import current_user
from web.keys import RATE_LIMITER, SERVICES, TOKEN_ID, USER

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
NO_STORE: Mapping[str, str] = {"Cache-Control": "no-store"}

# core.errors codes to HTTP statuses.
STATUS_BY_CODE = {
    "invalid": 422,
    "not_found": 404,
    "conflict": 409,
    "forbidden": 403,
    "insufficient_credits": 402,
    "too_many_extractions": 409,
}

ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An API error with its status, stable code and message (plus optional fields)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.fields = fields


def error_body(status: int, code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, **fields}}


def json_bytes(data: Any) -> bytes:
    """`data` as JSON: orjson (several times faster than the json module); what orjson
    refuses (integers beyond 64 bits, lone surrogates) is written by the json module."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(data).encode()


def json_body_response(
    body: bytes, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A response carrying JSON that is already serialized."""
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def error_response(exc: ApiError) -> web.Response:
    return json_body_response(
        json_bytes(error_body(exc.status, exc.code, exc.message, **exc.fields)),
        status=exc.status,
        headers={"Cache-Control": "no-store", **exc.headers},
    )


def from_domain(exc: SoundboardError) -> ApiError:
    fields: dict[str, Any] = {}
    balance, needed = getattr(exc, "balance", None), getattr(exc, "needed", None)
    if balance is not None and needed is not None:
        refill = getattr(exc, "next_refill_at", None)
        fields = {"balance": balance, "needed": needed}
        fields["next_refill_at"] = refill.isoformat() if refill else None
    return ApiError(STATUS_BY_CODE.get(exc.code, 400), exc.code, str(exc), **fields)


def from_http(exc: web.HTTPException) -> ApiError:
    codes = {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }
    code = codes.get(exc.status, "http_error" if exc.status < 500 else "internal")
    message = exc.reason if exc.status != 404 else "There is no such API endpoint."
    headers = {k: v for k, v in exc.headers.items() if k in {"Allow", "Retry-After"}}
    return ApiError(exc.status, code, message, headers=headers)


def api_user(request: web.Request) -> User:
    """The authenticated user (set by the API's auth middleware)."""
    if USER not in request:
        raise ApiError(401, "unauthorized", "Sign in or send 'Authorization: Bearer <token>'.")
    return request[USER]


def api_admin(request: web.Request) -> User:
    user = api_user(request)
    if user.role != Role.ADMIN:
        raise ApiError(403, "forbidden", "Only administrators may do this.")
    return user


def json_ok(data: Any, *, status: int = 200) -> web.Response:
    return json_body_response(json_bytes(data), status=status, headers=NO_STORE)


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    operation_id: str
    tag: str
    public: bool
    parameters: list[dict[str, Any]]
    responses: dict[int, str | None]
    request_body: str | None
    description: str


@dataclass
class ApiRoutes:
    """aiohttp routes plus what OpenAPI needs to describe them."""

    tag: str
    table: web.RouteTableDef = field(default_factory=web.RouteTableDef)
    operations: list[Operation] = field(default_factory=list)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: dict[int, str | None],
        parameters: list[dict[str, Any]] | None = None,
        request_body: str | None = None,
        public: bool = False,
        description: str = "",
    ) -> Callable[[ApiHandler], ApiHandler]:
        def decorate(handler: ApiHandler) -> ApiHandler:
            name = f"api.{handler.__name__}"
            self.table.route(method, path, name=name)(handler)
            self.operations.append(
                Operation(
                    method.lower(),
                    path,
                    summary,
                    handler.__name__,
                    self.tag,
                    public,
                    parameters or [],
                    responses,
                    request_body,
                    description,
                )
            )
            return handler

        return decorate

    def get(self, path: str, **kwargs: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[ApiHandler], ApiHandler]:
        return self.route("POST", path, **kwargs)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token or session; then the caller's rate limit. Public routes skip both."""
    route = request.match_info.route
    public = route.name in request.app[PUBLIC_ROUTES] if route.name else False
    if public:
        return await handler(request)
    key = await _identify(request)
    decision = request.config_dict[RATE_LIMITER].hit(key)
    limit_headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
    }
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: the limit is {decision.limit} a minute. "
            f"Try again in {decision.retry_after} s.",
            headers={**limit_headers, "Retry-After": str(decision.retry_after)},
            retry_after=decision.retry_after,
        )
    response = await handler(request)
    if not response.prepared:
        response.headers.update(limit_headers)
    return response


async def _identify(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "unauthorized",
                "Send the API token as 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": 'Bearer realm="soundboard"'},
            )
        found = await request.config_dict[SERVICES].accounts.authenticate_token(token.strip())
        if found is None:
            raise ApiError(
                401,
                "invalid_token",
                "This API token is unknown or has been revoked.",
                headers={"WWW-Authenticate": 'Bearer realm="soundboard", error="invalid_token"'},
            )
        request[USER] = found.user
        request[TOKEN_ID] = found.token_id
        return f"token:{found.token_id}"
    user = await current_user(request)
    if user is None:
        raise ApiError(
            401,
            "unauthorized",
            "Sign in, or send an API token as 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": 'Bearer realm="soundboard"'},
        )
    return f"user:{user.id}"


PUBLIC_ROUTES = web.AppKey("public_routes", frozenset[str])


def build_api(route_sets: list[ApiRoutes]) -> web.Application:
    """The /api/v1 sub-application from every module's routes."""
    api = web.Application(middlewares=[authenticate])
    public: set[str] = set()
    for routes in route_sets:
        api.router.add_routes(routes.table)
        public |= {f"api.{op.operation_id}" for op in routes.operations if op.public}
    api[PUBLIC_ROUTES] = frozenset(public)
    return api
