"""Ledger filters from a query string and the formatting of ledger rows, shared by the pages,
the CSV export, the live stream and the JSON API."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from core.errors import InvalidInput
from core.models import CreditTransaction
from core.repositories.base import MAX_PAGE_SIZE, Page
from core.services.credits import Action, CreditsService

ACTIONS: tuple[str, ...] = (
    Action.SIGNUP,
    Action.REFILL,
    Action.PLAY,
    Action.EXTRACTION,
    Action.REFUND,
    Action.GRANT,
    Action.TAKE,
)
ACTION_LABELS = {
    Action.SIGNUP: "Sign-up",
    Action.REFILL: "Refill",
    Action.PLAY: "Play",
    Action.EXTRACTION: "Extraction",
    Action.REFUND: "Refund",
    Action.GRANT: "Granted",
    Action.TAKE: "Taken",
}
DEFAULT_PAGE_SIZE = 50
DEFAULT_CHART_DAYS = 30
_ACTION = re.compile(r"^[a-z0-9_]{1,32}$")
_MINUS = "\u2212"


def _parse_moment(value: str, name: str, *, end: bool) -> datetime:
    """A date (whole day; `end` means up to the end of that day) or an ISO 8601 datetime."""
    value = value.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"'{name}' must be a date like 2026-01-31 or a time like 2026-01-31T12:00:00Z."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_limit(raw: str | None, default: int = DEFAULT_PAGE_SIZE) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput(f"'limit' must be a whole number from 1 to {MAX_PAGE_SIZE}.") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"'limit' must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    return limit


@dataclass(frozen=True)
class LedgerFilter:
    action: str | None = None
    since_text: str = ""
    until_text: str = ""
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    cursor: str | None = None
    limit: int = DEFAULT_PAGE_SIZE

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LedgerFilter:
        action = (query.get("action") or "").strip() or None
        if action is not None and not _ACTION.match(action):
            raise InvalidInput("'action' must be one of: " + ", ".join(ACTIONS) + ".")
        since_text = (query.get("since") or "").strip()
        until_text = (query.get("until") or "").strip()
        since = _parse_moment(since_text, "since", end=False) if since_text else None
        until = _parse_moment(until_text, "until", end=True) if until_text else None
        if since and until and since >= until:
            raise InvalidInput("The start of the date range must be before its end.")
        return cls(
            action=action,
            since_text=since_text,
            until_text=until_text,
            since=since,
            until=until,
            cursor=query.get("cursor") or None,
            limit=parse_limit(query.get("limit")),
        )

    @property
    def is_filtered(self) -> bool:
        return bool(self.action or self.since or self.until)

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters for this filter (with `changes`), empty ones left out."""
        f = replace(self, **changes)
        values = {
            "action": f.action or "",
            "since": f.since_text,
            "until": f.until_text,
            "cursor": f.cursor or "",
            "limit": str(f.limit) if f.limit != DEFAULT_PAGE_SIZE else "",
        }
        return {k: v for k, v in values.items() if v}

    def query(self, **changes: Any) -> str:
        params = self.params(**changes)
        return ("?" + urlencode(params)) if params else ""

    def chart_range(
        self, now: datetime, first_activity: datetime | None = None
    ) -> tuple[datetime, datetime]:
        """The filter's dates, or else the last 30 days (or less, when the ledger is younger)."""
        until = min(self.until, now) if self.until else now
        since = self.since or until - timedelta(days=DEFAULT_CHART_DAYS)
        if self.since is None and first_activity is not None and first_activity > since:
            since = first_activity - max((until - first_activity) / 50, timedelta(seconds=1))
        if since >= until:
            since = until - timedelta(days=1)
        return since, until


async def ledger_page(
    credits: CreditsService,
    user_id: int,
    ledger_filter: LedgerFilter,
    *,
    limit: int | None = None,
) -> Page[CreditTransaction]:
    """The page of the member's ledger that the filter (and its cursor) points at."""
    return await credits.history(
        user_id,
        cursor=ledger_filter.cursor,
        limit=limit or ledger_filter.limit,
        action=ledger_filter.action,
        since=ledger_filter.since,
        until=ledger_filter.until,
    )


def action_label(action: str) -> str:
    return ACTION_LABELS.get(action, action.replace("_", " ").capitalize())


def signed(amount: int) -> str:
    """+5, or -3 written with a real minus sign (U+2212, which screen readers say)."""
    return f"+{amount}" if amount > 0 else (f"{_MINUS}{-amount}" if amount < 0 else "0")


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def details(meta: Mapping[str, Any] | None) -> str:
    """The metadata as short 'key: value' text, in a stable order."""
    if not meta:
        return ""
    parts = []
    for key in sorted(meta):
        value = meta[key]
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key.replace('_', ' ')}: {text}")
    return "; ".join(parts)


def row_view(row: CreditTransaction) -> dict[str, Any]:
    """A ledger row ready for a template or the live stream."""
    return {
        "id": row.id,
        "time": format_time(row.created_at),
        "date": row.created_at.astimezone(UTC).strftime("%Y-%m-%d"),
        "clock": row.created_at.astimezone(UTC).strftime("%H:%M UTC"),
        "iso": row.created_at.astimezone(UTC).isoformat(),
        "action": row.action,
        "action_label": action_label(row.action),
        "amount": row.amount,
        "amount_text": signed(row.amount),
        "balance_after": row.balance_after,
        "details": details(row.meta),
    }
