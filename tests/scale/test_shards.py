"""Two bot processes, shards 0 and 1 of 2, each playing in the guild its shard owns."""

from __future__ import annotations

from pathlib import Path

from core.config import load_settings
from core.services.container import Services
from tests.bot.harness import answer_text
from tests.core import audiogen
from tests.fakediscord import FakeDiscord, audio_frames, decode_opus_to_pcm, dominant_frequency
from tests.scale.procs import base_env, bot_env, process


async def test_each_shard_process_serves_its_own_guilds(tmp_path: Path, pg_url: str) -> None:
    async with FakeDiscord(shard_count=2) as fake:
        guilds = [await fake.add_guild(name=f"shard{n}", shard_id=n) for n in (0, 1)]
        members = [await fake.add_member(g.id, name=f"m{n}") for n, g in enumerate(guilds)]
        env = base_env(tmp_path, pg_url)
        settings = load_settings(
            database_url=pg_url,
            data_dir=tmp_path / "data",
            sounds_dir=tmp_path / "sounds",
            _env_file=None,
        )
        async with Services.from_settings(settings) as services:
            for n, guild in enumerate(guilds):
                tone = audiogen.render(
                    tmp_path / f"t{n}.wav", f"sine=frequency={400 + 300 * n}", seconds=0.5
                )
                await services.sounds.add_file(tone, name="tone", guild_id=guild.id)
        async with (
            process(["bot"], bot_env(fake, env, shard=0, shards=2), tmp_path / "bot0.log"),
            process(["bot"], bot_env(fake, env, shard=1, shards=2), tmp_path / "bot1.log"),
        ):
            await fake.wait_for_gateway_ready(count=2, timeout=60)
            sessions = {s.shard_id: s for s in fake.sessions.values() if s.ready}
            assert set(sessions) == {0, 1}
            for n, (guild, member) in enumerate(zip(guilds, members, strict=True)):
                await fake.set_user_voice(guild.id, member.id, guild.voice_channel.id)
                inter = await fake.send_slash_command(
                    guild.id, guild.text_channel.id, member.id, "play", {"sound": "tone"}
                )
                assert (await answer_text(inter, timeout=20)).startswith("Playing **tone**")
                packets = await fake.wait_for_silence_end(guild.id, timeout=20)
                pcm = decode_opus_to_pcm(audio_frames(packets))
                assert abs(dominant_frequency(pcm) - (400 + 300 * n)) <= 5
        logs = [(tmp_path / f"bot{n}.log").read_text() for n in (0, 1)]
        # Each guild's play was handled by the process owning its shard, and only there.
        for n, guild in enumerate(guilds):
            assert f"play started guild={guild.id}" in logs[n]
            assert f"play started guild={guild.id}" not in logs[1 - n]
