"""How many guilds one bot process can play into at once with no packet more than 20 ms late
at p99, against the fake Discord (the bot is its own process, `soundboard bot`).

For each guild count: every guild gets a member in voice and a first short play (so the bot is
connected everywhere; the guilds are spread over shards of the one bot process, since Discord
allows a gateway connection 120 commands a minute and each voice join is one), then a long sound
is played in all of them at once. While all streams run, the bot logs its pacer's send lateness
every 2 s; the fake voice server (in this process) logs each packet's arrival as the kernel
stamped it on the receiving socket (SO_TIMESTAMPNS), so this process's own load does not skew
it. CPU per stream is the bot process's CPU time (/proc) while every stream plays, divided by
streams and seconds.

    uv run python -m bench.bench_concurrency --guilds 100,250,500 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_settings  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.services.container import Services  # noqa: E402
from tests.core import audiogen  # noqa: E402
from tests.fakediscord import FakeDiscord  # noqa: E402

PACER_LINE = re.compile(
    r"pacer streams=(\d+) packets=(\d+) late_over_20ms=(\d+) p99_ms<=([\d.]+) "
    r"max_late_ms=([\d.]+)"
)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def run(guilds: int, seconds: float, engine: str, workdir: Path) -> dict[str, float]:
    data = workdir / f"{engine}-{guilds}"
    data.mkdir()
    settings = load_settings(data_dir=data / "data", sounds_dir=data / "sounds", _env_file=None)
    await upgrade(settings.database_url)
    async with Services.from_settings(settings) as services:
        blip = audiogen.render(data / "blip.wav", "sine=frequency=330", seconds=0.3)
        await services.sounds.add_file(blip, name="blip")
        long = audiogen.render(data / "long.wav", "sine=frequency=440", seconds=seconds)
        await services.sounds.add_file(long, name="long")
    # Discord lets one gateway connection send 120 commands a minute, and each voice join is
    # one: spread the guilds over enough shards (all run by this one bot process).
    shards = max(1, -(-guilds // 50))
    async with FakeDiscord(shard_count=shards) as fake:
        fake.voice.start_header_sink()
        members = []
        for n in range(guilds):
            guild = await fake.add_guild(name=f"g{n}", shard_id=n % shards)
            member = await fake.add_member(guild.id, name=f"m{n}")
            members.append((guild, member))
        env = fake.client_env(
            {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(data),
                "DATA_DIR": str(data / "data"),
                "SOUNDS_DIR": str(data / "sounds"),
                "DISCORD_GUILD_READY_TIMEOUT": "0.5",
                "PLAY_COOLDOWN_SECONDS": "0",
                "PLAYBACK_ENGINE": engine,
                "PACER_STATS_INTERVAL_SECONDS": "2",
                "SHARD_COUNT": str(shards),
                "LOG_LEVEL": "INFO",
            }
        )
        exe = Path(sys.executable).with_name("soundboard")
        proc = await asyncio.create_subprocess_exec(
            str(exe), "bot", cwd=data, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        log_file = data / "data" / "logs" / "soundboard.log"
        try:
            await fake.wait_for_commands(timeout=120)
            await fake.wait_for_gateway_ready(count=shards, timeout=30 + 8 * shards)
            for guild, member in members:
                await fake.set_user_voice(guild.id, member.id, guild.voice_channel.id)

            async def play_everywhere(sound: str) -> None:
                for chunk in range(0, guilds, 50):
                    await asyncio.gather(
                        *(
                            fake.send_slash_command(
                                g.id, g.text_channel.id, m.id, "play", {"sound": sound}
                            )
                            for g, m in members[chunk : chunk + 50]
                        )
                    )

            def received(guild_id: int) -> int:
                return len(fake.voice.header_log.get(guild_id, []))

            # Join voice everywhere in waves (as members trickle in on a real bot), then play.
            # A join that times out is retried once, as the member would; a second failure ends
            # the run with the bot's log.
            for chunk in range(0, guilds, 25):
                wave = members[chunk : chunk + 25]
                for attempt in (1, 2):
                    await asyncio.gather(
                        *(
                            fake.send_slash_command(
                                g.id, g.text_channel.id, m.id, "play", {"sound": "blip"}
                            )
                            for g, m in wave
                        )
                    )
                    try:
                        await fake.wait_for(
                            lambda wave=wave: all(received(g.id) >= 15 for g, _ in wave),
                            timeout=45,
                            what="a wave of guilds connected",
                        )
                        break
                    except TimeoutError:
                        missing = [(g, m) for g, m in wave if received(g.id) < 15]
                        if attempt == 2:
                            shutil.copy(log_file, "/tmp/bench_concurrency_bot.log")
                            raise RuntimeError(
                                f"{len(missing)} guilds of a wave got no audio; bot log copied "
                                "to /tmp/bench_concurrency_bot.log"
                            ) from None
                        print(f"retrying {len(missing)} joins that timed out", file=sys.stderr)
                        wave = missing
            await asyncio.sleep(1.0)
            before = {g.id: received(g.id) for g, _ in members}
            log_offset = log_file.stat().st_size
            await play_everywhere("long")
            # CPU is measured in the steady state: every stream started, none finished yet.
            await fake.wait_for(
                lambda: all(received(g.id) - before[g.id] >= 25 for g, _ in members),
                timeout=seconds * 6 + 60,
                what="long sound started everywhere",
            )
            cpu0, wall0 = cpu_seconds(proc.pid or 0), time.perf_counter()
            await asyncio.sleep(max(1.0, seconds * 0.4))
            cpu1, wall1 = cpu_seconds(proc.pid or 0), time.perf_counter()
            expected = int(seconds / 0.020 * 0.95)
            await fake.wait_for(
                lambda: all(received(g.id) - before[g.id] >= expected for g, _ in members),
                timeout=seconds * 6 + 60,
                what="long sound everywhere",
            )
            await asyncio.sleep(2.5)  # the last pacer line of the window
            with log_file.open() as fh:
                fh.seek(log_offset)
                lines = [PACER_LINE.search(line) for line in fh]
            windows = [m for m in lines if m and int(m.group(1)) >= guilds * 0.95]
            packets = sum(int(m.group(2)) for m in windows)
            late = sum(int(m.group(3)) for m in windows)
            p99 = max((float(m.group(4)) for m in windows), default=float("nan"))
            max_late = max((float(m.group(5)) for m in windows), default=float("nan"))
            # Receiver side: each packet against its stream's 20 ms schedule, the slot taken
            # from its sequence number (a lost packet leaves its slot empty), anchored at the
            # stream's earliest packet; packets the receiving socket dropped are counted apart.
            lateness: list[float] = []
            slots = received_total = 0
            for guild, _ in members:
                log = fake.voice.header_log[guild.id][before[guild.id] :]
                first_seq, first = log[0]
                offsets = [
                    (arrival - first) / 1e6 - 20 * ((seq - first_seq) % 65536)
                    for seq, arrival in log
                ]
                anchor = min(offsets)
                lateness += [offset - anchor for offset in offsets]
                slots += (log[-1][0] - first_seq) % 65536 + 1
                received_total += len(log)
            lateness.sort()
            recv_p99 = lateness[int(len(lateness) * 0.99)]
            stream_seconds = guilds * (wall1 - wall0)
            return {
                "guilds": guilds,
                "windows": len(windows),
                "send_p99_ms": p99,
                "late_fraction": late / packets if packets else float("nan"),
                "max_late_ms": max_late,
                "recv_p99_ms": recv_p99,
                "recv_lost": 1 - received_total / slots,
                "cpu_ms_per_stream_s": (cpu1 - cpu0) * 1000 / stream_seconds,
                "bot_cpu_percent": (cpu1 - cpu0) / (wall1 - wall0) * 100,
            }
        finally:
            with contextlib.suppress(OSError):
                shutil.copy(log_file, f"/tmp/bench_concurrency_bot_{guilds}.log")
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=60)
            except TimeoutError:
                proc.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--guilds", default="100,250,500")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--engine", default="opus", choices=["opus", "ffmpeg-pcm"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-conc-"))
    rows = []
    try:
        for count in (int(g) for g in args.guilds.split(",")):
            rows.append(await run(count, args.seconds, args.engine, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"# Concurrent playback ({args.engine}, {args.seconds:.0f} s sound in every guild)")
    print()
    print(
        "| guilds | send p99 ms (bucket bound) | packets >20 ms late | max send late ms "
        "| receive p99 ms | lost at receiver | CPU ms per stream-second | bot CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['guilds']:.0f} | ≤{r['send_p99_ms']:.0f} | {r['late_fraction']:.3%} "
            f"| {r['max_late_ms']:.1f} | {r['recv_p99_ms']:.1f} | {r['recv_lost']:.3%} "
            f"| {r['cpu_ms_per_stream_s']:.2f} | {r['bot_cpu_percent']:.0f} |"
        )


if __name__ == "__main__":
    # The fake Discord receives every stream's packets in this process: uvloop's UDP path
    # keeps up with 25,000 packets a second where the default loop drops some.
    uvloop.run(main())
