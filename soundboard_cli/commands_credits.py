from __future__ import annotations

import argparse
from typing import Any

from core.config import Settings
from core.services.container import open_services
from core.services.credits import transaction_dict
from soundboard_cli.output import err, out, out_json, table


def register(sub: Any) -> None:
    credits = sub.add_parser("credits", help="inspect and change credit balances").add_subparsers(
        dest="credits_command", metavar="ACTION", required=True
    )
    for name, help_text, handler in (
        ("grant", "give credits to a user", credits_grant),
        ("take", "take credits from a user (fails if the balance is too low)", credits_take),
    ):
        cmd = credits.add_parser(name, help=help_text)
        cmd.add_argument("discord_id", type=int, metavar="DISCORD_ID")
        cmd.add_argument("amount", type=int, metavar="AMOUNT")
        cmd.add_argument("--reason", required=True, help="why; kept in the ledger")
        cmd.set_defaults(handler=handler)
    balance = credits.add_parser("balance", help="show a user's balance")
    balance.add_argument("discord_id", type=int, metavar="DISCORD_ID")
    balance.set_defaults(handler=credits_balance)
    history = credits.add_parser("history", help="show a user's ledger, newest first")
    history.add_argument("discord_id", type=int, metavar="DISCORD_ID")
    history.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(handler=credits_history)
    verify = credits.add_parser("verify", help="check every user's ledger chain")
    verify.set_defaults(handler=credits_verify)


async def credits_grant(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.get_by_discord_id(args.discord_id)
        row = await services.credits.grant(
            user.id or 0, args.amount, reason=args.reason, actor="cli"
        )
    out(f"Granted {args.amount} credits to {user.display_name}; balance {row.balance_after}.")
    return 0


async def credits_take(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.get_by_discord_id(args.discord_id)
        row = await services.credits.take(
            user.id or 0, args.amount, reason=args.reason, actor="cli"
        )
    out(f"Took {args.amount} credits from {user.display_name}; balance {row.balance_after}.")
    return 0


async def credits_balance(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.get_by_discord_id(args.discord_id)
        summary = await services.users.summary(user.id or 0)
    out(
        f"{user.display_name}: {user.credits} credits on the {summary.plan.name} plan; "
        f"next refill {summary.next_refill_at:%Y-%m-%d %H:%M} UTC."
    )
    return 0


async def credits_history(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.get_by_discord_id(args.discord_id)
        page = await services.credits.history(user.id or 0, limit=args.limit)
    rows = [transaction_dict(t) for t in page.items]
    if args.json:
        out_json(rows)
        return 0
    table(
        [
            [
                r["created_at"][:19],
                r["action"],
                f"{r['amount']:+d}",
                str(r["balance_after"]),
                str(r["metadata"].get("reason") or r["metadata"].get("sound") or ""),
            ]
            for r in rows
        ],
        ["TIME", "ACTION", "AMOUNT", "BALANCE", "DETAILS"],
    )
    return 0


async def credits_verify(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        problems = await services.credits.verify()
    if problems:
        for problem in problems:
            err(f"broken ledger: {problem}")
        return 1
    out("Every ledger verifies.")
    return 0
