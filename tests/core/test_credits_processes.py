from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from core.services.container import Services
from tests.core.helpers import make_user

ROOT = Path(__file__).resolve().parents[2]


async def test_two_processes_never_double_spend(services: Services, database_url: str) -> None:
    """Two OS processes, 100 concurrent deductions each, one balance of 100 in one database."""
    user = await make_user(services, credits=100)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.core.deduct_worker",
            database_url,
            str(user.id),
            "100",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await p.communicate() for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr.decode()[-2000:]
    wins = [int(stdout) for stdout, _ in outputs]
    assert sum(wins) == 100
    assert (await services.users.get(user.id or 0)).credits == 0
    assert await services.credits.verify() == []
