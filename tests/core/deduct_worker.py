"""Run N concurrent deductions of 1 in this process; print how many succeeded (test helper)."""

from __future__ import annotations

import asyncio
import sys

from core.config import load_settings
from core.errors import InsufficientCredits
from core.services.container import Services


async def main(url: str, user_id: int, count: int) -> int:
    settings = load_settings(database_url=url, _env_file=None)
    async with Services.from_settings(settings) as services:

        async def one() -> bool:
            try:
                await services.credits.deduct(user_id, 1)
            except InsufficientCredits:
                return False
            return True

        results = await asyncio.gather(*(one() for _ in range(count)))
    return results.count(True)


if __name__ == "__main__":
    won = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    sys.stdout.write(f"{won}\n")
