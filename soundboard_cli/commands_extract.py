"""`soundboard extract URL --guild ID --user DISCORD_ID [--name NAME]`: one job, in the
foreground. Prints the new sound's id on success; a failure exits 1 with the reason."""

from __future__ import annotations

import argparse
from typing import Any

from core.config import Settings
from core.errors import InvalidInput
from core.models import ExtractionStatus
from core.services.container import open_services
from soundboard_cli.output import err, out


def register(sub: Any) -> None:
    extract = sub.add_parser(
        "extract",
        help="pull the audio of a video or audio page into a server's library",
        description=(
            "Run one extraction in the foreground: the member is charged like for /extract "
            "(refunded on failure) and the new sound's id is printed."
        ),
    )
    extract.add_argument("url", metavar="URL", help="an http(s) link to a video or audio page")
    extract.add_argument("--guild", type=int, required=True, help="Discord server id")
    extract.add_argument(
        "--user", type=int, required=True, help="Discord id of the member who pays for it"
    )
    extract.add_argument("--name", help="the sound's name (default: the media's title)")
    extract.set_defaults(handler=run_extract)


async def run_extract(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        user = await services.users.ensure_discord_user(args.user, f"Discord user {args.user}")
        submitted = await services.extractions.submit(
            args.url, guild_id=args.guild, user_id=user.id or 0, name=args.name
        )
        job = submitted.job
        assert job.id is not None
        if submitted.reused:
            err(f"The same link is already being extracted (job {job.id}); waiting for it.")
        else:
            err(f"Extraction job {job.id} started.")
        job = await services.extractions.run_foreground(job.id)
    if job.status == ExtractionStatus.COMPLETED and job.sound_id is not None:
        out(str(job.sound_id))
        return 0
    if job.status == ExtractionStatus.FAILED:
        raise InvalidInput(job.error or "The extraction failed.")
    raise InvalidInput(f"The extraction did not finish (job {job.id} is {job.status.value}).")
