"""Start latency of /play: from the INTERACTION_CREATE frame leaving the fake gateway to the first
audio RTP packet reaching the fake voice socket, with the bot already in the channel.

The bot runs as its own process (`soundboard bot`), once with the Ogg Opus engine and once with
discord.py's stock FFmpegPCMAudio path (which needs a system libopus), in the same run.

    uv run python -m bench.bench_bot --plays 40
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import statistics
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
from tests.fakediscord import FakeDiscord, is_silence_frame  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(engine: str, plays: int, workdir: Path) -> list[float]:
    data = workdir / engine
    data.mkdir()
    settings = load_settings(data_dir=data / "data", sounds_dir=data / "sounds", _env_file=None)
    await upgrade(settings.database_url)
    async with FakeDiscord() as fake:
        guild = await fake.add_guild(name=f"bench-{engine}")
        member = await fake.add_member(guild.id, name="bencher")
        async with Services.from_settings(settings) as services:
            tone = audiogen.render(data / "tone.wav", "sine=frequency=440", seconds=0.3)
            await services.sounds.add_file(tone, name="blip", guild_id=guild.id)
            user = await services.users.ensure_discord_user(member.id, "bencher")
            await services.credits.grant(user.id or 0, plays * 2, reason="benchmark")
        env = fake.client_env(
            {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(data),
                "DATA_DIR": str(data / "data"),
                "SOUNDS_DIR": str(data / "sounds"),
                "DISCORD_GUILD_READY_TIMEOUT": "0.1",
                "PLAY_COOLDOWN_SECONDS": "0",
                "PLAYBACK_ENGINE": engine,
                "LOG_LEVEL": "WARNING",
            }
        )
        exe = Path(sys.executable).with_name("soundboard")
        proc = await asyncio.create_subprocess_exec(str(exe), "bot", cwd=data, env=env)
        try:
            await fake.wait_for_commands(timeout=60)
            await fake.wait_for_gateway_ready(timeout=60)
            await fake.set_user_voice(guild.id, member.id, guild.voice_channel.id)
            latencies: list[float] = []
            for n in range(plays + 1):
                start = len(fake.audio_packets(guild.id))
                inter = await fake.send_slash_command(
                    guild.id, guild.text_channel.id, member.id, "play", {"sound": "blip"}
                )

                def first_audio(start: int = start) -> int | None:
                    for packet in fake.audio_packets(guild.id)[start:]:
                        if not is_silence_frame(packet.payload):
                            return packet.arrival_ns
                    return None

                arrival = await fake.wait_for(first_audio, timeout=10, what="first audio")
                await fake.wait_for_silence_end(guild.id, start=start, timeout=10)
                if n > 0:  # the first play joins the channel: not part of the measure
                    latencies.append((arrival - inter.sent_at_ns) / 1e6)
                await asyncio.sleep(0.05)
            return latencies
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plays", type=int, default=40)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-bot-"))
    try:
        started = time.perf_counter()
        results = {
            engine: await measure(engine, args.plays, workdir) for engine in ("opus", "ffmpeg-pcm")
        }
        print(f"# /play start latency ({args.plays} plays each, bot already in the channel)")
        print()
        print("| engine | median ms | p95 ms | min ms | max ms |")
        print("|---|---|---|---|---|")
        for engine, values in results.items():
            print(
                f"| {engine} | {statistics.median(values):.2f} | {percentile(values, 95):.2f} "
                f"| {min(values):.2f} | {max(values):.2f} |"
            )
        ratio = statistics.median(results["ffmpeg-pcm"]) / statistics.median(results["opus"])
        print()
        print(
            f"ffmpeg-pcm median / opus median: {ratio:.1f}x "
            f"(total {time.perf_counter() - started:.0f} s)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    # The fake Discord runs in this process: uvloop and no collector pauses keep its own delays
    # (which both engines pay alike) out of the measure.
    gc.disable()
    uvloop.run(main())
