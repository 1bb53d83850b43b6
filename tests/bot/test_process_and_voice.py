"""The bot run as a user runs it (its CLI, in its own process), and voice reconnects."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from core.services.container import Services
from tests.bot.harness import BotEnv, answer_text
from tests.conftest import make_settings
from tests.core import audiogen
from tests.fakediscord import FakeDiscord, audio_frames, decode_opus_to_pcm, dominant_frequency
from tests.scale.procs import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


async def test_soundboard_run_process_plays_and_serves(tmp_path: Path, sqlite_url: str) -> None:
    """`soundboard run` (the bot and the web app in one process, as the README starts it),
    settings in its environment, driven over the fake Discord and over HTTP."""
    async with FakeDiscord() as fake:
        guild = await fake.add_guild(name="Process Guild")
        carol = await fake.add_member(guild.id, name="carol")
        settings = make_settings(tmp_path, sqlite_url)
        async with Services.from_settings(settings) as services:
            tone = audiogen.render(tmp_path / "tone.wav", "sine=frequency=523", seconds=0.6)
            sound = (await services.sounds.add_file(tone, name="chime", guild_id=guild.id)).sound
        web_port = free_port()
        env = fake.client_env(
            {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "DATABASE_URL": sqlite_url,
                "DATA_DIR": str(tmp_path / "data"),
                "SOUNDS_DIR": str(tmp_path / "sounds"),
                "DISCORD_GUILD_READY_TIMEOUT": "0.1",
                "LOG_LEVEL": "INFO",
                "WEB_PORT": str(web_port),
            }
        )
        exe = Path(sys.executable).with_name("soundboard")
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await fake.wait_for_commands(timeout=60)
            await fake.wait_for_gateway_ready(timeout=30)
            await wait_http(f"http://127.0.0.1:{web_port}/healthz")
            await fake.set_user_voice(guild.id, carol.id, guild.voice_channel.id)
            inter = await fake.send_slash_command(
                guild.id, guild.text_channel.id, carol.id, "play", {"sound": "chime"}
            )
            assert (await answer_text(inter)).startswith("Playing **chime**")
            packets = await fake.wait_for_silence_end(guild.id, timeout=15)
            pcm = decode_opus_to_pcm(audio_frames(packets))
            assert abs(dominant_frequency(pcm) - 523) <= 5
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
            except TimeoutError:
                proc.kill()
                _, stderr = await proc.communicate()
        log_text = (tmp_path / "data" / "logs" / "soundboard.log").read_text()
        assert "play started" in log_text and f"sound={sound.id}" in log_text
        assert (fake.token or "fake-token") not in log_text
        assert b"Traceback" not in stderr, stderr.decode()[-3000:]
        assert proc.returncode == 0  # a clean shutdown on SIGTERM


async def test_voice_reconnect_keeps_playing_and_queue(env: BotEnv) -> None:
    """The voice server drops the connection (4015) mid-sound: the player resumes, and the
    queued sound still plays afterwards."""
    first = await env.add_tone("survivor", 440, seconds=2.0)
    second = await env.add_tone("after", 880)
    await env.join_voice(env.alice)
    start = len(env.fake.audio_packets(env.guild.id))
    await answer_text(await env.slash(env.alice, "play", {"sound": str(first.id)}))
    await answer_text(await env.slash(env.alice, "play", {"sound": str(second.id)}))
    await env.fake.wait_for_audio(env.guild.id, min_packets=15, start=start)
    assert await env.fake.close_voice_websocket(env.guild.id, code=4015)
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=20)
    frames = audio_frames(packets)
    assert len(frames) >= 0.8 * 2.0 / 0.020
    assert abs(dominant_frequency(decode_opus_to_pcm(frames)) - 440) <= 5
    rest = await env.fake.wait_for_silence_end(env.guild.id, start=start + len(packets), timeout=20)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(rest))) - 880) <= 5


@pytest.mark.parametrize("code", [4006])
async def test_voice_session_invalid_does_not_hang_player(env: BotEnv, code: int) -> None:
    """After a 4006 (session no longer valid) the next play still works."""
    sound = await env.add_tone("again", 660)
    await env.join_voice(env.alice)
    await env.fake.wait_for_voice_connection(env.guild.id)
    await env.fake.close_voice_websocket(env.guild.id, code=code)
    start = len(env.fake.audio_packets(env.guild.id))
    text = ""
    for _ in range(20):  # discord.py reconnects in the background; retry politely
        text = await answer_text(await env.slash(env.alice, "play", {"sound": str(sound.id)}))
        if text.startswith(("Playing", "Queued")):
            break
        await asyncio.sleep(0.5)
    assert text.startswith(("Playing", "Queued")), text
    packets = await env.fake.wait_for_silence_end(env.guild.id, start=start, timeout=20)
    assert abs(dominant_frequency(decode_opus_to_pcm(audio_frames(packets))) - 660) <= 5
