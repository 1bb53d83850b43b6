"""A second OS process on the same database: deduct 1 from a user N times, one at a time, and
print the ledger row ids as JSON (test helper for test_events_pg)."""

from __future__ import annotations

import asyncio
import json
import sys

from core.config import load_settings
from core.services.container import Services


async def main(url: str, user_id: int, count: int) -> list[int]:
    settings = load_settings(database_url=url, _env_file=None)
    async with Services.from_settings(settings) as services:
        return [(await services.credits.deduct(user_id, 1)).id or 0 for _ in range(count)]


if __name__ == "__main__":
    ids = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    sys.stdout.write(json.dumps(ids) + "\n")
