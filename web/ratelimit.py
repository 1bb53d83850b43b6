"""An in-memory token bucket per key (an API token, or a user on a session)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds until one request is allowed again (0 when allowed)


class RateLimiter:
    """`per_minute` requests a minute, in bursts of up to `per_minute`, refilled continuously."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def hit(self, key: str) -> Decision:
        now = self._clock()
        tokens, updated = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - updated) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            return Decision(False, self.per_minute, 0, max(1, wait))
        tokens -= 1.0
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._forget_full(now)
        self._buckets[key] = (tokens, now)
        return Decision(True, self.per_minute, int(tokens), 0)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they hold no information."""
        full = [
            key
            for key, (tokens, updated) in self._buckets.items()
            if tokens + (now - updated) * self._rate >= self.per_minute
        ]
        for key in full:
            del self._buckets[key]
