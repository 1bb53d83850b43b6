"""Domain errors. Their messages are written for end users: the bot and web show them as is."""

from __future__ import annotations

from datetime import datetime


class SoundboardError(Exception):
    """Base of every error a user may see."""

    code = "error"


class NotFound(SoundboardError):
    code = "not_found"


class Conflict(SoundboardError):
    code = "conflict"


class InvalidInput(SoundboardError):
    code = "invalid"


class TooManyJobs(InvalidInput):
    """A member already has as many queued jobs as allowed."""

    code = "too_many_extractions"


class PermissionDenied(SoundboardError):
    code = "forbidden"


class InsufficientCredits(SoundboardError):
    code = "insufficient_credits"

    def __init__(self, *, balance: int, needed: int, next_refill_at: datetime | None = None):
        self.balance = balance
        self.needed = needed
        self.next_refill_at = next_refill_at
        message = f"Not enough credits: you have {balance}, this needs {needed}."
        if next_refill_at is not None:
            message += f" Your next refill is at {next_refill_at:%Y-%m-%d %H:%M} UTC."
        super().__init__(message)
