"""The OpenAPI 3.1 description of /api/v1, built from the routes' own declarations."""

from __future__ import annotations

from typing import Any

from web.api import API_PREFIX, ApiRoutes

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {
                    "type": "string",
                    "description": "Stable, machine-readable.",
                    "examples": [
                        "bad_request",
                        "invalid_cursor",
                        "unauthorized",
                        "invalid_token",
                        "forbidden",
                        "not_found",
                        "conflict",
                        "invalid",
                        "insufficient_credits",
                        "rate_limited",
                    ],
                },
                "message": {"type": "string", "description": "For people; may change."},
            },
        }
    },
}

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Bad request (malformed parameter or cursor)",
    401: "Not signed in, or the token is unknown or revoked",
    402: "Not enough credits",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    422: "Invalid input",
    429: "Rate limited; see Retry-After",
}


def _response(status: int, schema: str | None) -> dict[str, Any]:
    description = STATUS_TEXT.get(status, "Response")
    if status >= 400:
        ref = {"$ref": "#/components/schemas/Error"}
        return {"description": description, "content": {"application/json": {"schema": ref}}}
    if schema is None:
        return {"description": description}
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def build_openapi(route_sets: list[ApiRoutes], base_url: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for routes in route_sets:
        schemas.update(routes.schemas)
        for op in routes.operations:
            operation: dict[str, Any] = {
                "operationId": op.operation_id,
                "summary": op.summary,
                "tags": [op.tag],
                "responses": {str(s): _response(s, ref) for s, ref in op.responses.items()},
            }
            if op.description:
                operation["description"] = op.description
            if op.parameters:
                operation["parameters"] = op.parameters
            if op.request_body:
                ref = {"$ref": f"#/components/schemas/{op.request_body}"}
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref}},
                }
            if op.public:
                operation["security"] = []
            paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Soundboard API",
            "version": "1",
            "description": (
                "Authenticate with a personal API token (create one on the Account page) as "
                "'Authorization: Bearer <token>', or with the web session cookie (then unsafe "
                "methods need the X-CSRF-Token header). Each token has a per-minute rate limit; "
                "a 429 answer says how long to wait in Retry-After. Errors are JSON objects "
                "with a stable `code`."
            ),
        },
        "servers": [{"url": base_url.rstrip("/") + API_PREFIX}],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "soundboard_session"},
            },
        },
    }
