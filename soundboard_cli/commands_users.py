from __future__ import annotations

import argparse
from typing import Any

from core.config import Settings
from core.models import Role
from core.services.container import open_services
from soundboard_cli.output import out, out_json, table


def register(sub: Any) -> None:
    users = sub.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", metavar="ACTION", required=True
    )
    add = users.add_parser("add", help="add a user known by their Discord id")
    add.add_argument("--discord-id", type=int, required=True, help="the member's Discord user id")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--admin", action="store_true", help="make the user an admin of the web app")
    add.set_defaults(handler=users_add)
    list_ = users.add_parser("list", help="list users with their balances")
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(handler=users_list)


async def users_add(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.create(
            display_name=args.name,
            discord_id=args.discord_id,
            role=Role.ADMIN if args.admin else Role.USER,
        )
    out(
        f"Added user {user.id} ({user.display_name}, Discord {user.discord_id}) "
        f"with {user.credits} credits."
    )
    return 0


async def users_list(args: argparse.Namespace, settings: Settings) -> int:
    rows: list[dict[str, Any]] = []
    async with open_services(settings) as services:
        plans = {plan.id: plan.code for plan in await services.users.list_plans()}
        cursor: str | None = None
        while True:
            page = await services.users.list_page(cursor=cursor, limit=200)
            rows.extend(
                {
                    "id": u.id,
                    "discord_id": u.discord_id,
                    "name": u.display_name,
                    "role": u.role.value,
                    "plan": plans.get(u.plan_id, "?"),
                    "credits": u.credits,
                    "created_at": u.created_at.isoformat(),
                }
                for u in page.items
            )
            cursor = page.next_cursor
            if cursor is None:
                break
    if args.json:
        out_json(rows)
    elif not rows:
        out("No users yet.")
    else:
        table(
            [
                [
                    str(r["id"]),
                    str(r["discord_id"] or "-"),
                    r["name"],
                    r["role"],
                    r["plan"],
                    str(r["credits"]),
                ]
                for r in rows
            ],
            ["ID", "DISCORD ID", "NAME", "ROLE", "PLAN", "CREDITS"],
        )
    return 0
