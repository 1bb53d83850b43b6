"""/api/v1: the sound library, playing a sound through the bot, extractions, and the admin
library tools (scan, normalize).

Discord ids (guilds, members) are 64-bit: they are strings in every answer and may be sent as
strings or integers. Lists are keyset paged: pass `next_cursor` back as `cursor`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from core.errors import InvalidInput, NotFound, PermissionDenied
from core.events import PlayAnswered
from core.models import Extraction, Role, SoundType
from core.repositories.base import MAX_PAGE_SIZE
from core.services.normalizer import NormalizeOutcome
from core.services.sounds import MAX_NAME_LENGTH, SoundView, clean_tags
from web.api import ApiError, ApiRoutes, api_admin, api_user, json_ok
from web.keys import SERVICES
from web.ledger_view import parse_limit

log = logging.getLogger(__name__)

routes = ApiRoutes(tag="sounds")

DEFAULT_PAGE_SIZE = 50
MAX_SEARCH_LENGTH = 100
MAX_ID = 2**63 - 1
# The bot's refusal codes that have a status of their own; any other refusal is a 409.
PLAY_STATUS_BY_CODE = {"insufficient_credits": 402, "not_found": 404, "internal": 500}

_SNOWFLAKE: dict[str, Any] = {
    "type": "string",
    "pattern": "^[0-9]{1,20}$",
    "description": "A Discord id (64-bit), as a string.",
}
_NULLABLE_SNOWFLAKE: dict[str, Any] = {**_SNOWFLAKE, "type": ["string", "null"]}
_CURSOR: dict[str, Any] = {
    "type": ["string", "null"],
    "description": "Pass as `cursor` for the next page; null at the end.",
}

routes.schemas.update(
    {
        "Sound": {
            "type": "object",
            "required": [
                "id",
                "name",
                "guild",
                "type",
                "duration_ms",
                "play_count",
                "tags",
                "is_normalized",
            ],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "guild": {
                    **_NULLABLE_SNOWFLAKE,
                    "description": "The server whose sound this is; null: the global library.",
                },
                "type": {"type": "string", "enum": [t.value for t in SoundType]},
                "duration_ms": {"type": "integer"},
                "play_count": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "is_normalized": {"type": "boolean"},
            },
        },
        "SoundPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Sound"}},
                "next_cursor": _CURSOR,
            },
        },
        "PlayResult": {
            "type": "object",
            "required": ["status", "position", "balance_after", "guild", "message", "sound"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["played", "queued"],
                    "description": "played: started at once; queued: after `position` others.",
                },
                "position": {"type": "integer", "description": "0 when it started at once."},
                "balance_after": {
                    "type": ["integer", "null"],
                    "description": "Credits left after the play; null when it was free.",
                },
                "guild": {**_SNOWFLAKE, "description": "The server it plays in."},
                "message": {"type": "string"},
                "sound": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
                },
            },
        },
        "ScanRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "guild": {
                    **_SNOWFLAKE,
                    "description": "The server new files join (unless their folder names one); "
                    "default: the global library.",
                },
                "normalize": {
                    "type": "boolean",
                    "description": "Normalize new and changed files (default: NORMALIZE_ON_ADD).",
                },
            },
        },
        "ScanReport": {
            "type": "object",
            "required": ["added", "updated", "deleted", "skipped", "unchanged", "seconds"],
            "properties": {
                "added": {"type": "array", "items": {"type": "string"}},
                "updated": {"type": "array", "items": {"type": "string"}},
                "deleted": {"type": "array", "items": {"type": "string"}},
                "skipped": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"file": {"type": "string"}, "reason": {"type": "string"}},
                    },
                },
                "unchanged": {"type": "integer"},
                "normalize_failed": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"file": {"type": "string"}, "reason": {"type": "string"}},
                    },
                },
                "seconds": {"type": "number"},
            },
        },
        "NormalizeRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "Exactly one of `all` (true), `type` or `id`.",
            "properties": {
                "all": {"type": "boolean", "const": True},
                "type": {"type": "string", "enum": [t.value for t in SoundType]},
                "id": {"type": "integer"},
                "force": {
                    "type": "boolean",
                    "default": False,
                    "description": "Normalize again sounds that already are.",
                },
                "one_pass": {"type": "boolean", "default": False},
            },
        },
        "NormalizeReport": {
            "type": "object",
            "required": ["total", "normalized", "skipped", "failed", "results"],
            "properties": {
                "total": {"type": "integer"},
                "normalized": {"type": "integer"},
                "skipped": {"type": "integer"},
                "failed": {"type": "integer"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "name", "status", "error"],
                        "properties": {
                            "id": {"type": "integer"},
                            "name": {"type": "string"},
                            "status": {
                                "type": "string",
                                "enum": ["normalized", "skipped", "failed"],
                                "description": "skipped: already normalized (use force).",
                            },
                            "error": {"type": ["string", "null"]},
                            "method": {"type": ["string", "null"]},
                            "silent": {"type": ["boolean", "null"]},
                            "duration_ms": {"type": ["integer", "null"]},
                        },
                    },
                },
            },
        },
        "ExtractionRequest": {
            "type": "object",
            "required": ["url", "guild"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "format": "uri", "maxLength": 2000},
                "guild": {**_SNOWFLAKE, "description": "The server whose library gets it."},
                "name": {
                    "type": "string",
                    "maxLength": MAX_NAME_LENGTH,
                    "description": "The sound's name; default: the media's title.",
                },
            },
        },
        "Extraction": {
            "type": "object",
            "required": [
                "id",
                "url",
                "status",
                "progress",
                "error",
                "sound_id",
                "guild",
                "created_at",
            ],
            "properties": {
                "id": {"type": "integer"},
                "url": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": ["pending", "processing", "completed", "failed"],
                },
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "error": {"type": ["string", "null"]},
                "sound_id": {"type": ["integer", "null"]},
                "guild": _SNOWFLAKE,
                "title": {"type": ["string", "null"]},
                "name": {"type": ["string", "null"], "description": "The name asked for."},
                "created_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "reused": {
                    "type": "boolean",
                    "description": "Only when submitting: the same link was already queued "
                    "for this server, and that job is returned (nothing charged).",
                },
            },
        },
        "ExtractionPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Extraction"}},
                "next_cursor": _CURSOR,
            },
        },
    }
)

_PAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "The `next_cursor` of the previous page.",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "default": DEFAULT_PAGE_SIZE,
        },
    },
]


def _id_parameter(description: str) -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer"},
        "description": description,
    }


# ----- parsing --------------------------------------------------------------------------------


def _snowflake(value: object, name: str) -> int:
    """A Discord id sent as a string (or an integer): 1 to 2^63-1."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"'{name}' must be a Discord id (digits, as a string).")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20 or not 0 < int(text) <= MAX_ID:
        raise InvalidInput(f"'{name}' must be a Discord id (digits, as a string).")
    return int(text)


def _flag(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = query.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise InvalidInput(f"'{name}' must be 1 or 0 (true or false).")


def _path_id(request: web.Request, what: str) -> int:
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_ID:
        raise NotFound(f"That {what} does not exist.")
    return int(raw)


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object sent; with `optional`, an empty body is an empty object."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "The body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    return data


def _only(data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(
            f"Unknown field {unknown[0]!r}; expected some of: {', '.join(sorted(allowed))}."
        )


def _bool_field(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"'{name}' must be true or false.")
    return value


def _guild_text(guild_id: int | None) -> str | None:
    return str(guild_id) if guild_id is not None else None


# ----- sounds ---------------------------------------------------------------------------------


def sound_dict(view: SoundView) -> dict[str, Any]:
    s = view.sound
    return {
        "id": s.id,
        "name": s.name,
        "guild": _guild_text(s.guild_id),
        "type": s.sound_type.value,
        "duration_ms": s.duration_ms,
        "play_count": s.play_count,
        "tags": view.tags,
        "is_normalized": s.is_normalized,
    }


@routes.get(
    "/sounds",
    summary="A page of sounds",
    description=(
        "Without `guild`: the global library. With `guild`: that server's sounds and the global "
        "library (the sounds playable there; `include_global=0` for the server's own only). "
        "Ordered by id; keyset paged."
    ),
    parameters=[
        {
            "name": "guild",
            "in": "query",
            "schema": _SNOWFLAKE,
            "description": "A server id; default: the global library.",
        },
        {
            "name": "include_global",
            "in": "query",
            "schema": {"type": "boolean", "default": True},
            "description": "With `guild`: include the global library (1/0).",
        },
        {
            "name": "search",
            "in": "query",
            "schema": {"type": "string", "maxLength": MAX_SEARCH_LENGTH},
            "description": "Names containing this text (case-insensitive).",
        },
        {"name": "tag", "in": "query", "schema": {"type": "string"}},
        *_PAGE_PARAMETERS,
    ],
    responses={200: "SoundPage", 400: None, 401: None, 422: None, 429: None},
)
async def list_sounds(request: web.Request) -> web.Response:
    api_user(request)
    query = request.query
    raw_guild = query.get("guild", "").strip()
    guild_id = _snowflake(raw_guild, "guild") if raw_guild else None
    search = query.get("search", "").strip() or None
    if search is not None and len(search) > MAX_SEARCH_LENGTH:
        raise InvalidInput(f"'search' can be at most {MAX_SEARCH_LENGTH} characters.")
    raw_tag = query.get("tag", "").strip()
    tag = clean_tags([raw_tag])[0] if raw_tag else None
    services = request.config_dict[SERVICES]
    page = await services.sounds.list_page(
        guild_id=guild_id,
        include_global=_flag(query, "include_global", default=True),
        search=search,
        tag=tag,
        cursor=query.get("cursor") or None,
        limit=parse_limit(query.get("limit"), DEFAULT_PAGE_SIZE),
    )
    views = await services.sounds.views(page.items)
    return json_ok({"items": [sound_dict(v) for v in views], "next_cursor": page.next_cursor})


def _play_error(answer: PlayAnswered) -> ApiError:
    if answer.code == "not_in_voice":
        return ApiError(409, "not_in_voice", answer.message)
    status = PLAY_STATUS_BY_CODE.get(answer.code, 409)
    fields: dict[str, Any] = {}
    if answer.code == "insufficient_credits" and answer.balance_after is not None:
        fields["balance"] = answer.balance_after
    return ApiError(status, answer.code, answer.message, **fields)


@routes.post(
    "/sounds/{id}/play",
    summary="Play a sound in the voice channel you are in",
    description=(
        "The hotkey and stream-deck endpoint: the bot plays the sound in the voice channel "
        "you are in right now (on any server it shares with you, for a global sound; on the "
        "sound's server otherwise), charged like /play. Needs a linked Discord account. "
        "Errors: 409 `discord_not_linked`; 409 `not_in_voice`; 409 `conflict` when no bot "
        "process sees you in voice (or none runs); 402 `insufficient_credits`; 409 with the "
        "bot's code for other refusals (`queue_full`, `player`: busy in another channel, "
        "slow down, ...)."
    ),
    parameters=[_id_parameter("The sound's id.")],
    responses={200: "PlayResult", 401: None, 402: None, 404: None, 409: None, 429: None},
)
async def play_sound(request: web.Request) -> web.Response:
    user = api_user(request)
    sound_id = _path_id(request, "sound")
    if user.discord_id is None:
        raise ApiError(
            409,
            "discord_not_linked",
            "Link your Discord account first (on the Account page): the bot plays the sound "
            "where that account is in voice.",
        )
    services = request.config_dict[SERVICES]
    sound = await services.sounds.get(sound_id)
    answer = await services.remote_play.request(
        user_id=user.id or 0, discord_id=user.discord_id, sound=sound
    )
    if not answer.ok:
        raise _play_error(answer)
    position = answer.position or 0
    return json_ok(
        {
            "status": "played" if position == 0 else "queued",
            "position": position,
            "balance_after": answer.balance_after,
            "guild": _guild_text(answer.guild_id),
            "message": answer.message,
            "sound": {"id": sound.id, "name": sound.name},
        }
    )


# ----- admin: scan and normalize --------------------------------------------------------------


@routes.post(
    "/admin/scan",
    summary="Sync the library with the originals folders (admins)",
    description=(
        "Adds new files, updates changed ones and removes sounds whose file is gone; answers "
        "with the report when done. The body is optional."
    ),
    request_body="ScanRequest",
    responses={200: "ScanReport", 400: None, 401: None, 403: None, 422: None, 429: None},
)
async def admin_scan(request: web.Request) -> web.Response:
    admin = api_admin(request)
    data = await _body(request, optional=True)
    _only(data, {"guild", "normalize"})
    guild_id = _snowflake(data["guild"], "guild") if data.get("guild") is not None else None
    normalize = data.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise InvalidInput("'normalize' must be true or false.")
    report = await request.config_dict[SERVICES].scanner.scan(
        guild_id=guild_id, normalize=normalize
    )
    log.info("api scan by user=%s guild=%s", admin.id, guild_id)
    return json_ok(report.as_dict())


def _outcome_dict(outcome: NormalizeOutcome) -> dict[str, Any]:
    result = outcome.result
    if outcome.error is not None:
        status = "failed"
    elif result is None:
        status = "skipped"
    else:
        status = "normalized"
    return {
        "id": outcome.sound_id,
        "name": outcome.name,
        "status": status,
        "error": outcome.error,
        "method": result.method if result else None,
        "silent": result.silent if result else None,
        "duration_ms": result.duration_ms if result else None,
    }


@routes.post(
    "/admin/normalize",
    summary="Loudness-normalize sounds (admins)",
    description=(
        "Exactly one of `all: true`, `type` (SDB, TTS or EXT) or `id`. Sounds already "
        "normalized are skipped unless `force`. Answers when every selected sound is done, "
        "with one result per sound; one bad file never stops the others."
    ),
    request_body="NormalizeRequest",
    responses={200: "NormalizeReport", 400: None, 401: None, 403: None, 404: None, 422: None},
)
async def admin_normalize(request: web.Request) -> web.Response:
    admin = api_admin(request)
    data = await _body(request)
    _only(data, {"all", "type", "id", "force", "one_pass"})
    chosen = [key for key in ("all", "type", "id") if data.get(key) not in (None, False)]
    if len(chosen) != 1:
        raise InvalidInput("Send exactly one of 'all': true, 'type' or 'id'.")
    force, one_pass = _bool_field(data, "force"), _bool_field(data, "one_pass")
    services = request.config_dict[SERVICES]
    sound_type: SoundType | None = None
    ids: list[int] | None = None
    if chosen == ["all"]:
        if data["all"] is not True:
            raise InvalidInput("'all' must be true.")
    elif chosen == ["type"]:
        value = data["type"]
        if not isinstance(value, str) or value.upper() not in SoundType.__members__:
            raise InvalidInput("'type' must be one of: SDB, TTS, EXT.")
        sound_type = SoundType(value.upper())
    else:
        value = data["id"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
            raise InvalidInput("'id' must be a sound id (a positive integer).")
        await services.sounds.get(value)  # a clear 404 before any work
        ids = [value]
    outcomes = await services.sounds.normalize_selection(
        sound_type=sound_type, ids=ids, force=force, one_pass=one_pass
    )
    results = [_outcome_dict(o) for o in outcomes]
    counts = {
        s: sum(r["status"] == s for r in results) for s in ("normalized", "skipped", "failed")
    }
    log.info(
        "api normalize by user=%s selection=%s force=%s counts=%s",
        admin.id,
        chosen[0],
        force,
        counts,
    )
    return json_ok({"total": len(results), **counts, "results": results})


# ----- extractions ----------------------------------------------------------------------------


def extraction_dict(job: Extraction) -> dict[str, Any]:
    return {
        "id": job.id,
        "url": job.url,
        "status": job.status.value,
        "progress": job.progress,
        "error": job.error,
        "sound_id": job.sound_id,
        "guild": str(job.guild_id),
        "title": job.title,
        "name": job.requested_name,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@routes.post(
    "/extractions",
    summary="Pull audio from a video or audio page into a server's library",
    description=(
        "Checks the link, charges the extraction cost and queues a job; answers at once (202) "
        "with the job. Poll GET /extractions/{id} for its progress. Errors: 422 `invalid` "
        "(a bad, unsafe or not allowed link, a bad name); 409 `conflict` (the name is taken); "
        "409 `too_many_extractions` (too many of your jobs are waiting: try again when one has "
        "finished; a 409 rather than a 429 because it is not a rate and has no retry time); "
        "402 `insufficient_credits` (nothing charged)."
    ),
    request_body="ExtractionRequest",
    responses={202: "Extraction", 400: None, 401: None, 402: None, 409: None, 422: None},
)
async def create_extraction(request: web.Request) -> web.Response:
    user = api_user(request)
    data = await _body(request)
    _only(data, {"url", "guild", "name"})
    url, name = data.get("url"), data.get("name")
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("'url' must be a link to a video or audio page.")
    if "guild" not in data:
        raise InvalidInput("'guild' (the server whose library gets the sound) is required.")
    guild_id = _snowflake(data["guild"], "guild")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("'name' must be text.")
    services = request.config_dict[SERVICES]
    if user.role != Role.ADMIN and not await services.sounds.has_used_guild(
        user_id=user.id or 0, guild_id=guild_id
    ):
        raise PermissionDenied(
            "You can only add sounds to a server where you have used the bot "
            "(play a sound there first, or use /extract in Discord)."
        )
    submitted = await services.extractions.submit(
        url, guild_id=guild_id, user_id=user.id or 0, name=name
    )
    return json_ok(
        {**extraction_dict(submitted.job), "reused": submitted.reused},
        status=202,
    )


@routes.get(
    "/extractions",
    summary="Extraction jobs, newest first",
    description=(
        "Your own jobs. Administrators may pass `all=1` (everyone's) or `guild` (everyone's "
        "in that server); for others `guild` narrows their own jobs."
    ),
    parameters=[
        {"name": "all", "in": "query", "schema": {"type": "boolean", "default": False}},
        {"name": "guild", "in": "query", "schema": _SNOWFLAKE},
        *_PAGE_PARAMETERS,
    ],
    responses={200: "ExtractionPage", 400: None, 401: None, 403: None, 422: None, 429: None},
)
async def list_extractions(request: web.Request) -> web.Response:
    user = api_user(request)
    query = request.query
    everyone = _flag(query, "all")
    raw_guild = query.get("guild", "").strip()
    guild_id = _snowflake(raw_guild, "guild") if raw_guild else None
    is_admin = user.role == Role.ADMIN
    if everyone and not is_admin:
        raise PermissionDenied("Only administrators may list everyone's extractions.")
    owner = None if is_admin and (everyone or guild_id is not None) else user.id
    page = await request.config_dict[SERVICES].extractions.list_page(
        guild_id=guild_id,
        user_id=owner,
        cursor=query.get("cursor") or None,
        limit=parse_limit(query.get("limit"), DEFAULT_PAGE_SIZE),
    )
    return json_ok(
        {"items": [extraction_dict(j) for j in page.items], "next_cursor": page.next_cursor}
    )


@routes.get(
    "/extractions/{id}",
    summary="One extraction job",
    description="Your own jobs (administrators: any job); others' are 404.",
    parameters=[_id_parameter("The job's id.")],
    responses={200: "Extraction", 401: None, 404: None, 429: None},
)
async def get_extraction(request: web.Request) -> web.Response:
    user = api_user(request)
    job_id = _path_id(request, "extraction")
    job = await request.config_dict[SERVICES].extractions.get(job_id)
    if job.user_id != user.id and user.role != Role.ADMIN:
        raise NotFound("That extraction does not exist.")
    return json_ok(extraction_dict(job))
