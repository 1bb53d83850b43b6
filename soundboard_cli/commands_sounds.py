from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import InvalidInput
from core.models import SoundType
from core.services.container import open_services
from core.services.normalize_worker import NormalizeWorker
from core.services.normalizer import NormalizeOutcome
from soundboard_cli.output import err, out, out_json, table


def register(sub: Any) -> None:
    sounds = sub.add_parser("sounds", help="manage the sound library").add_subparsers(
        dest="sounds_command", metavar="ACTION", required=True
    )
    add = sounds.add_parser("add", help="add an audio file to the library")
    add.add_argument("file", type=Path, metavar="FILE")
    add.add_argument("--name", required=True, help="the name members will play it by")
    add.add_argument("--guild", type=int, help="Discord server id (default: the global library)")
    add.add_argument(
        "--type",
        choices=[t.value for t in SoundType],
        default="SDB",
        help="SDB (soundboard, default), TTS or EXT",
    )
    add.add_argument("--tags", default="", help="comma-separated tags, e.g. meme,short")
    add.add_argument("--no-normalize", action="store_true", help="skip loudness normalization")
    add.set_defaults(handler=sounds_add)

    list_ = sounds.add_parser("list", help="list sounds")
    list_.add_argument("--guild", type=int, help="only this server's sounds (default: global)")
    list_.add_argument("--all", action="store_true", help="every server's sounds")
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(handler=sounds_list)

    remove = sounds.add_parser("remove", help="delete a sound and its files")
    remove.add_argument("id", type=int, metavar="ID")
    remove.set_defaults(handler=sounds_remove)

    rename = sounds.add_parser("rename", help="rename a sound")
    rename.add_argument("id", type=int, metavar="ID")
    rename.add_argument("name", metavar="NAME")
    rename.set_defaults(handler=sounds_rename)

    scan = sub.add_parser("scan", help="sync the database with the files in SOUNDS_DIR/originals")
    scan.add_argument("--guild", type=int, help="server that new files join (default: global)")
    scan.add_argument("--no-normalize", action="store_true", help="skip normalizing new files")
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.set_defaults(handler=run_scan)

    norm = sub.add_parser("normalize", help="loudness-normalize sounds (EBU R128)")
    which = norm.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every sound")
    which.add_argument("--type", choices=[t.value for t in SoundType], help="one type of sound")
    which.add_argument("--id", type=int, help="one sound")
    which.add_argument(
        "--worker",
        action="store_true",
        help="run as a worker until stopped: normalize sounds waiting for it (any machine "
        "sharing the database and SOUNDS_DIR)",
    )
    norm.add_argument("--force", action="store_true", help="redo sounds already normalized")
    norm.add_argument("--one-pass", action="store_true", help="single dynamic pass (faster)")
    norm.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="with --worker: sounds normalized at once (default: the number of CPUs)",
    )
    norm.add_argument("--json", action="store_true", help="print the report as JSON")
    norm.set_defaults(handler=run_normalize)


async def sounds_add(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        result = await services.sounds.add_file(
            args.file,
            name=args.name,
            guild_id=args.guild,
            sound_type=SoundType(args.type),
            tags=args.tags,
            normalize=False if args.no_normalize else None,
        )
    out(f"{result.message} (id {result.sound.id})")
    if result.normalize_error:
        err(f"warning: normalization failed: {result.normalize_error}")
    return 0


async def sounds_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        sounds = await services.sounds.list_all(guild_id=args.guild, all_guilds=args.all)
        views = await services.sounds.views(sounds)
    if args.json:
        out_json([v.as_dict() for v in views])
    elif not views:
        out("No sounds.")
    else:
        table(
            [
                [
                    str(v.sound.id),
                    v.sound.name,
                    str(v.sound.guild_id or "global"),
                    v.sound.sound_type.value,
                    f"{v.sound.duration_ms / 1000:.1f}s",
                    "yes" if v.sound.is_normalized else "no",
                    ",".join(v.tags),
                ]
                for v in views
            ],
            ["ID", "NAME", "GUILD", "TYPE", "LENGTH", "NORMALIZED", "TAGS"],
        )
    return 0


async def sounds_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        sound = await services.sounds.delete(args.id)
    out(f"Removed '{sound.name}' (id {sound.id}).")
    return 0


async def sounds_rename(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        sound = await services.sounds.rename(args.id, args.name)
    out(f"Renamed sound {sound.id} to '{sound.name}'.")
    return 0


async def run_scan(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as services:
        report = await services.scanner.scan(
            guild_id=args.guild, normalize=False if args.no_normalize else None
        )
    if args.json:
        out_json(report.as_dict())
        return 0
    out(
        f"Scan finished in {report.seconds:.2f} s: {len(report.added)} added, "
        f"{len(report.updated)} updated, {len(report.deleted)} deleted, "
        f"{len(report.skipped)} skipped, {report.unchanged} unchanged."
    )
    for label, items in (
        ("added", report.added),
        ("updated", report.updated),
        ("deleted", report.deleted),
    ):
        for item in items:
            out(f"  {label}: {item}")
    for item, reason in report.skipped:
        out(f"  skipped: {item}: {reason}")
    for item, reason in report.normalize_failed:
        out(f"  normalize failed: {item}: {reason}")
    return 0


async def run_normalize(args: argparse.Namespace, settings: Settings) -> int:
    if args.worker:
        return await run_normalize_worker(args, settings)
    if args.concurrency is not None:
        raise InvalidInput("--concurrency goes with --worker.")

    def progress(done: int, total: int, outcome: NormalizeOutcome) -> None:
        if not args.json:
            state = "ok" if outcome.ok else f"FAILED: {outcome.error}"
            out(f"[{done}/{total}] {outcome.name}: {state}")

    async with open_services(settings) as services:
        if args.id is not None:
            await services.sounds.get(args.id)  # a clear "does not exist" before any work
        outcomes = await services.sounds.normalize_selection(
            sound_type=SoundType(args.type) if args.type else None,
            ids=[args.id] if args.id is not None else None,
            force=args.force,
            one_pass=args.one_pass,
            progress=progress,
        )
    failed = [o for o in outcomes if not o.ok]
    if args.json:
        out_json(
            [
                {
                    "id": o.sound_id,
                    "name": o.name,
                    "ok": o.ok,
                    "error": o.error,
                    "method": o.result.method if o.result else None,
                    "silent": o.result.silent if o.result else None,
                }
                for o in outcomes
            ]
        )
    else:
        out(f"Normalized {len(outcomes) - len(failed)} of {len(outcomes)} sounds.")
        for o in failed:
            out(f"  failed: {o.name} (id {o.sound_id}): {o.error}")
    if args.id is not None and failed:
        raise InvalidInput(failed[0].error or "normalization failed")
    return 1 if failed else 0


def _outcome_line(outcome: NormalizeOutcome) -> str:
    if outcome.sound is None:
        state = f"not recorded: {outcome.error}"
    elif outcome.ok:
        state = "ok"
    else:
        state = f"FAILED: {outcome.error}"
    return f"{outcome.name} (id {outcome.sound_id}): {state}"


async def run_normalize_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Normalize waiting sounds until SIGTERM/SIGINT; one line (or JSON object) per sound."""
    if args.force:
        raise InvalidInput("--force does not go with --worker (a worker takes waiting sounds).")
    if args.concurrency is not None and args.concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1.")

    def report(outcome: NormalizeOutcome) -> None:
        if args.json:
            out(
                json.dumps(
                    {
                        "id": outcome.sound_id,
                        "name": outcome.name,
                        "ok": outcome.ok,
                        "stored": outcome.sound is not None,
                        "error": outcome.error,
                    }
                )
            )
        else:
            out(_outcome_line(outcome))
        sys.stdout.flush()

    async with open_services(settings) as services:
        worker = NormalizeWorker(
            services.db,
            services.sounds,
            concurrency=args.concurrency,
            one_pass=args.one_pass,
            on_outcome=report,
        )
        await worker.start()
        if not args.json:
            err(f"Normalize worker {worker.owner} running ({worker.concurrency} at once).")
        try:
            await worker.wait()
        finally:
            await worker.stop()
    return 0
