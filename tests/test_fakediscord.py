"""The fake Discord driven by the real discord.py client (REST, gateway, voice, UDP)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import itertools
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.fakediscord import (
    FLAG_LOADING,
    FakeDiscord,
    FakeGuild,
    FakeMember,
    OggOpusSource,
    VoiceConnection,
    audio_frames,
    decode_opus_to_pcm,
    dominant_frequency,
    find_custom_ids,
    make_sine_ogg,
    read_ogg_opus_packets,
    shard_for,
    split_playbacks,
)
from tests.fakediscord import fixtures as fakediscord_fixtures
from tests.fakediscord.fixtures import discord_py_pointed_at, running_client

# Re-exported so pytest finds them in this module (avoids F811 on fixture parameters).
fake_discord = fakediscord_fixtures.fake_discord
fake_discord_in_process = fakediscord_fixtures.fake_discord_in_process

_log = logging.getLogger(__name__)

TONE_HZ = 440.0
TONE_SECONDS = 1.0
SOUNDS = ["airhorn", "boing", "bonk", "drumroll", "sad trombone"]
STOP_ID = "fakediscord-test:stop"


class StopView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Stop", style=discord.ButtonStyle.danger, custom_id=STOP_ID)
    async def stop_button(
        self, interaction: discord.Interaction, button: discord.ui.Button[StopView]
    ) -> None:
        guild = interaction.guild
        if guild is not None and isinstance(guild.voice_client, discord.VoiceClient):
            guild.voice_client.stop()
        await interaction.response.edit_message(content="Stopped", view=None)


class RenameModal(discord.ui.Modal, title="Rename sound"):
    new_name: discord.ui.TextInput[RenameModal] = discord.ui.TextInput(
        label="New name", custom_id="rename:new_name"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"renamed to {self.new_name.value}")


class PickView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)

    @discord.ui.select(
        custom_id="pick:sound",
        options=[discord.SelectOption(label=s, value=s) for s in SOUNDS],
    )
    async def pick(
        self, interaction: discord.Interaction, select: discord.ui.Select[PickView]
    ) -> None:
        await interaction.response.edit_message(content=f"chose {select.values[0]}", view=None)


def build_bot(ogg_path: Path) -> commands.Bot:
    """A minimal soundboard: /play, /sound (autocomplete), /admin upload (attachment)."""
    bot = commands.Bot(
        command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1
    )

    @bot.tree.command(name="play", description="Join your voice channel and play a tone")
    async def play(interaction: discord.Interaction) -> None:
        member = interaction.user
        if (
            not isinstance(member, discord.Member)
            or member.voice is None
            or member.voice.channel is None
        ):
            await interaction.response.send_message("Join a voice channel first", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        assert interaction.guild is not None
        voice = interaction.guild.voice_client
        if not isinstance(voice, discord.VoiceClient):
            voice = await member.voice.channel.connect(timeout=5.0)
        voice.play(OggOpusSource(ogg_path))
        await interaction.edit_original_response(content="Playing", view=StopView())

    @bot.tree.command(name="sound", description="Pick a sound")
    @app_commands.describe(name="Sound name")
    async def sound(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"picked {name}")

    @sound.autocomplete("name")
    async def sound_name(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=s, value=s) for s in SOUNDS if s.startswith(current.lower())
        ]

    @bot.tree.command(name="rename", description="Rename a sound (modal)")
    async def rename(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(RenameModal())

    @bot.tree.command(name="pick", description="Pick a sound (select menu)")
    async def pick(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Pick one", view=PickView())

    @bot.tree.command(name="announce", description="Post a file to the channel")
    async def announce(interaction: discord.Interaction) -> None:
        assert isinstance(interaction.channel, discord.TextChannel)
        file = discord.File(io.BytesIO(b"hello bytes"), filename="hello.txt")
        sent = await interaction.channel.send("announcement", file=file)
        await sent.edit(content="announcement (edited)")
        await interaction.response.send_message("done", ephemeral=True)

    admin = app_commands.Group(name="admin", description="Admin commands")

    @admin.command(name="upload", description="Upload a sound file")
    async def upload(
        interaction: discord.Interaction, file: discord.Attachment, volume: int = 100
    ) -> None:
        data = await file.read()
        digest = hashlib.sha256(data).hexdigest()[:12]
        await interaction.response.send_message(
            f"{file.filename} {len(data)} bytes {digest} volume={volume}", ephemeral=True
        )

    bot.tree.add_command(admin)

    async def setup_hook() -> None:
        bot.add_view(StopView())
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


def _has_len(items: list[tuple[str | None, str | None]], n: int) -> bool:
    return len(items) == n


@dataclass
class Env:
    fake: FakeDiscord
    bot: commands.Bot
    guild: FakeGuild
    alice: FakeMember
    ogg_path: Path


@pytest_asyncio.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    ogg_path = tmp_path_factory.mktemp("fakediscord") / "tone.ogg"
    await asyncio.to_thread(make_sine_ogg, ogg_path, TONE_HZ, TONE_SECONDS)
    async with FakeDiscord() as fake:
        guild = await fake.add_guild(name="Soundboard Test")
        alice = await fake.add_member(guild.id, name="alice")
        with discord_py_pointed_at(fake):
            bot = build_bot(ogg_path)
            async with running_client(bot, fake):
                yield Env(fake=fake, bot=bot, guild=guild, alice=alice, ogg_path=ogg_path)


async def test_commands_uploaded_and_guild_visible(env: Env) -> None:
    commands_ = await env.fake.wait_for_commands()
    by_name = {c["name"]: c for c in commands_}
    assert set(by_name) == {"play", "sound", "admin", "rename", "pick", "announce"}
    assert all(c["id"] and c["application_id"] == str(env.fake.application_id) for c in commands_)
    upload = by_name["admin"]["options"][0]
    assert (upload["name"], upload["type"]) == ("upload", 1)
    assert {o["name"]: o["type"] for o in upload["options"]} == {"file": 11, "volume": 4}
    assert by_name["sound"]["options"][0]["autocomplete"] is True

    guild = env.bot.get_guild(env.guild.id)
    assert guild is not None and guild.name == "Soundboard Test"
    assert {c.name for c in guild.voice_channels} == {"Voice"}
    assert env.bot.application_id == env.fake.application_id
    assert env.bot.user is not None and env.bot.user.id == env.fake.bot_user.id


async def test_play_streams_audio(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    await fake.set_user_voice(guild.id, alice.id, guild.voice_channel.id)
    start = len(fake.audio_packets(guild.id))

    inter = await fake.send_slash_command(guild.id, guild.text_channel.id, alice.id, "play")
    callback = await inter.wait_for_callback()
    assert callback.type == 5  # deferred, "thinking"
    assert callback.received_at_ns > inter.sent_at_ns > 0

    message = await inter.wait_for_original()
    assert message["content"] == "Playing"
    assert not int(message["flags"]) & FLAG_LOADING
    assert STOP_ID in find_custom_ids(message)

    conn = await fake.wait_for_voice_connection(guild.id)
    assert conn.mode == "aead_xchacha20_poly1305_rtpsize"
    await fake.wait_for_bot_voice(guild.id, guild.voice_channel.id)

    first = await fake.wait_for_audio(guild.id, min_packets=5, start=start)
    assert len(first) >= 5 and first[0].payload != first[1].payload
    packets = await fake.wait_for_silence_end(guild.id, start=start, timeout=10.0)
    frames = audio_frames(packets)
    expected = TONE_SECONDS / 0.020
    assert abs(len(frames) - expected) <= 0.1 * expected, len(frames)
    assert len(frames) == len(read_ogg_opus_packets(env.ogg_path))
    assert len(split_playbacks(packets)) == 1

    for prev, cur in itertools.pairwise(packets):
        assert cur.sequence == (prev.sequence + 1) % 65536
        assert cur.timestamp == (prev.timestamp + 960) % 2**32
        assert cur.ssrc == conn.ssrc
    duration_ms = (packets[-1].arrival_ns - packets[0].arrival_ns) / 1e6
    assert duration_ms > 0.8 * 20 * (len(packets) - 1), duration_ms  # paced, not a burst

    pcm = decode_opus_to_pcm(p.payload for p in packets)
    assert pcm.ndim == 2 and pcm.shape[1] == 2
    assert abs(pcm.shape[0] / 48000 - len(frames) * 0.020) < 0.03
    assert abs(dominant_frequency(pcm) - TONE_HZ) <= 5.0

    speaking = fake.speaking_events(guild.id)
    assert any(e.speaking == 1 for e in speaking)
    assert fake.unknown_requests == []


async def test_button_click_updates_message(env: Env) -> None:
    fake, alice = env.fake, env.alice
    message = await fake.wait_for_message(lambda m: STOP_ID in find_custom_ids(m))
    inter = await fake.click_button(message, STOP_ID, alice.id)
    callback = await inter.wait_for_callback()
    assert callback.type == 7
    assert callback.data["content"] == "Stopped"
    stored = fake.messages[int(message["id"])]
    assert stored["content"] == "Stopped"
    assert find_custom_ids(stored) == []
    assert inter.original_message_id == int(message["id"])


async def test_voice_resume_after_voice_server_crash(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    conn = await fake.wait_for_voice_connection(guild.id)
    assert await fake.close_voice_websocket(guild.id, code=4015)
    await fake.wait_for(
        lambda: conn.resumes == 1 and conn.ws is not None and conn.ready, what="voice resume"
    )
    start = len(fake.audio_packets(guild.id))
    inter = await fake.send_slash_command(guild.id, guild.text_channel.id, alice.id, "play")
    assert (await inter.wait_for_original())["content"] == "Playing"
    packets = await fake.wait_for_silence_end(guild.id, start=start, timeout=10.0)
    assert {p.ssrc for p in packets} == {conn.ssrc}
    assert abs(dominant_frequency(decode_opus_to_pcm(p.payload for p in packets)) - TONE_HZ) <= 5


async def test_voice_reconnect_after_session_invalid(env: Env) -> None:
    """4006 makes discord.py drop the voice session and join again with a new UDP socket."""
    fake, guild = env.fake, env.guild
    old = await fake.wait_for_voice_connection(guild.id)
    assert await fake.close_voice_websocket(guild.id, code=4006)

    def reconnected() -> VoiceConnection | None:
        conn = fake.voice.active_connection(guild.id)
        return conn if conn is not None and conn is not old and conn.ready else None

    new = await fake.wait_for(reconnected, timeout=10.0, what="voice reconnect")
    assert new.ssrc != old.ssrc and new.udp_address != old.udp_address
    assert fake.bot_voice_requests[-2:] == [(guild.id, None), (guild.id, guild.voice_channel.id)]


async def test_autocomplete_roundtrip(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    choices = await fake.autocomplete(
        guild.id, guild.text_channel.id, alice.id, "sound", {"name": "bo"}, focused="name"
    )
    assert [c["value"] for c in choices] == ["boing", "bonk"]

    inter = await fake.send_slash_command(
        guild.id, guild.text_channel.id, alice.id, "sound", {"name": "bonk"}
    )
    message = await inter.wait_for_original()
    assert message["content"] == "picked bonk"
    assert message["type"] == 20


async def test_subcommand_with_attachment(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    data = env.ogg_path.read_bytes()
    attachment = fake.add_attachment("tone.ogg", data, "audio/ogg")
    inter = await fake.send_slash_command(
        guild.id,
        guild.text_channel.id,
        alice.id,
        "admin upload",
        {"file": attachment, "volume": 50},
    )
    message = await inter.wait_for_original()
    digest = hashlib.sha256(data).hexdigest()[:12]
    assert message["content"] == f"tone.ogg {len(data)} bytes {digest} volume=50"
    assert int(message["flags"]) & 64  # ephemeral


async def test_modal_select_and_channel_message(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    channel_id = guild.text_channel.id

    inter = await fake.send_slash_command(guild.id, channel_id, alice.id, "rename")
    callback = await inter.wait_for_callback()
    assert callback.type == 9 and callback.data["custom_id"]
    submitted = await fake.submit_modal(inter, {"rename:new_name": "kazoo"})
    assert (await submitted.wait_for_original())["content"] == "renamed to kazoo"

    inter = await fake.send_slash_command(guild.id, channel_id, alice.id, "pick")
    message = await inter.wait_for_original()
    chosen = await fake.select_menu(message, "pick:sound", ["bonk"], alice.id)
    assert (await chosen.wait_for_callback()).type == 7
    assert fake.messages[int(message["id"])]["content"] == "chose bonk"

    inter = await fake.send_slash_command(guild.id, channel_id, alice.id, "announce")
    assert (await inter.wait_for_original())["content"] == "done"
    posted = await fake.wait_for_message(lambda m: m["content"].startswith("announcement"))
    assert posted["content"] == "announcement (edited)"
    assert int(posted["channel_id"]) == channel_id and "interaction_metadata" not in posted
    (attachment,) = posted["attachments"]
    assert attachment["filename"] == "hello.txt"
    assert fake.get_attachment_bytes(attachment) == b"hello bytes"
    kinds = [e.kind for e in fake.message_events if e.message["id"] == posted["id"]]
    assert kinds == ["create", "edit"]


async def test_voice_leave_and_user_without_voice(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    bob = await fake.add_member(guild.id, name="bob")
    inter = await fake.send_slash_command(guild.id, guild.text_channel.id, bob.id, "play")
    message = await inter.wait_for_original()
    assert message["content"] == "Join a voice channel first"

    discord_guild = env.bot.get_guild(guild.id)
    assert discord_guild is not None and discord_guild.voice_client is not None
    await discord_guild.voice_client.disconnect(force=True)
    await fake.wait_for_bot_voice(guild.id, None)
    await fake.set_user_voice(guild.id, alice.id, None)
    member = discord_guild.get_member(alice.id)
    await fake.wait_for(lambda: member is None or member.voice is None, what="alice left voice")


async def test_gateway_resume(env: Env) -> None:
    fake, guild, alice = env.fake, env.guild, env.alice
    session = next(iter(fake.sessions.values()))
    await fake.reconnect_gateway()
    await fake.wait_for(lambda: session.resumes == 1 and session.ws is not None, what="resume")
    inter = await fake.send_slash_command(
        guild.id, guild.text_channel.id, alice.id, "sound", {"name": "airhorn"}
    )
    assert (await inter.wait_for_original())["content"] == "picked airhorn"
    await fake.reconnect_gateway(op7=False)  # drop the socket (close 4000) instead
    await fake.wait_for(lambda: session.resumes == 2 and session.ws is not None, what="resume")
    inter = await fake.send_slash_command(
        guild.id, guild.text_channel.id, alice.id, "sound", {"name": "boing"}
    )
    assert (await inter.wait_for_original())["content"] == "picked boing"
    assert len(fake.sessions) == 1


async def test_rest_details(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    auth = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base_url}/gateway") as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["url"] == fake.gateway_url
        async with http.get(f"{fake.api_base_url}/nope", headers=auth) as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"] == "application/json"
            body = await resp.json()
            assert body["code"] == 0 and "message" in body
        async with http.get(
            f"{fake.api_base_url}/users/@me", headers={"Authorization": "Bot x"}
        ) as resp:
            assert resp.status == 401
        attachment = fake.add_attachment("a.bin", b"\x00\x01payload")
        async with http.get(attachment["url"]) as resp:
            assert resp.status == 200 and await resp.read() == b"\x00\x01payload"
        fake.inject_error("GET", "/users/@me", 500)
        async with http.get(f"{fake.api_base_url}/users/@me", headers=auth) as resp:
            assert resp.status == 500
        async with http.get(f"{fake.api_base_url}/users/@me", headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == str(fake.bot_user.id)
    assert [r.path for r in fake.unknown_requests] == ["/api/v10/nope"]


BOT_SCRIPT = """
import logging
import os
import sys
import os
import sys

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from tests.fakediscord.audio import OggOpusSource

logging.basicConfig(level=logging.INFO)
discord.http.Route.BASE = os.environ["DISCORD_API_BASE_URL"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1)


@bot.tree.command(name="play", description="Play a tone")
async def play(interaction: discord.Interaction) -> None:
    await interaction.response.defer()
    voice = await interaction.user.voice.channel.connect(timeout=5.0)
    voice.play(OggOpusSource(sys.argv[1]))
    await interaction.followup.send("playing")


async def setup_hook() -> None:
    await bot.tree.sync()


bot.setup_hook = setup_hook
bot.run(os.environ["DISCORD_TOKEN"], log_handler=None)
"""


async def test_bot_in_subprocess_trusts_cert_via_env(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    guild = await fake.add_guild()
    carol = await fake.add_member(guild.id, name="carol")
    ogg_path = await asyncio.to_thread(make_sine_ogg, tmp_path / "tone.ogg", 660.0, 0.5)
    script = tmp_path / "bot.py"
    script.write_text(BOT_SCRIPT)
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(ogg_path),
            env=fake.client_env(os.environ),
            cwd=str(Path(__file__).resolve().parent.parent),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        await fake.wait_for_commands(timeout=30.0)
        await fake.wait_for_gateway_ready(timeout=30.0)
        await fake.set_user_voice(guild.id, carol.id, guild.voice_channel.id)
        inter = await fake.send_slash_command(guild.id, guild.text_channel.id, carol.id, "play")
        followup = await inter.wait_for_followup(timeout=10.0)
        assert followup["content"] == "playing"
        packets = await fake.wait_for_silence_end(guild.id, timeout=10.0)
        assert abs(len(audio_frames(packets)) - 25) <= 3
        pcm = decode_opus_to_pcm(p.payload for p in packets)
        assert abs(dominant_frequency(pcm) - 660.0) <= 5.0
    except BaseException:
        _log.error("bot subprocess log:\n%s", log_path.read_text(errors="replace"))
        raise
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_auto_sharded_client(tmp_path: Path) -> None:
    async with FakeDiscord(shard_count=2) as fake:
        g0 = await fake.add_guild(name="zero", shard_id=0)
        g1 = await fake.add_guild(name="one", shard_id=1)
        assert (shard_for(g0.id, 2), shard_for(g1.id, 2)) == (0, 1)
        with discord_py_pointed_at(fake):
            bot = discord.AutoShardedClient(
                intents=discord.Intents.default(), guild_ready_timeout=0.1
            )

            async def no_wait(shard_id: int | None, *, initial: bool = False) -> None:
                return None

            bot.before_identify_hook = no_wait  # type: ignore[method-assign]
            async with running_client(bot, fake):
                assert bot.shard_count == 2
                sessions = sorted(fake.sessions.values(), key=lambda s: s.shard_id)
                assert [(s.shard_id, s.shard_count) for s in sessions] == [(0, 2), (1, 2)]
                guild0, guild1 = bot.get_guild(g0.id), bot.get_guild(g1.id)
                assert guild0 is not None and guild0.shard_id == 0
                assert guild1 is not None and guild1.shard_id == 1
        assert any(r.path.endswith("/gateway/bot") for r in fake.requests)


async def test_plain_client_events(fake_discord_in_process: FakeDiscord) -> None:
    fake = fake_discord_in_process
    guild = await fake.add_guild(voice_channels=("Lobby", "Music"))
    intents = discord.Intents.default()
    intents.members = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.1)
    joined: list[int] = []
    moves: list[tuple[str | None, str | None]] = []

    @client.event
    async def on_member_join(member: discord.Member) -> None:
        joined.append(member.id)

    @client.event
    async def on_voice_state_update(
        member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        moves.append(
            (
                before.channel.name if before.channel else None,
                after.channel.name if after.channel else None,
            )
        )

    async with running_client(client, fake):
        discord_guild = client.get_guild(guild.id)
        assert discord_guild is not None
        dave = await fake.add_member(guild.id, name="dave")
        # The setup helpers return once the client has parsed the event (sync_gateway).
        member = discord_guild.get_member(dave.id)
        assert member is not None and member.name == "dave"
        await fake.wait_for(lambda: joined == [dave.id], what="on_member_join")
        # discord.py reuses one VoiceState object per member: wait for each event in turn.
        for step, channel in enumerate(("Lobby", "Music", None), start=1):
            channel_id = guild.channel(channel).id if channel else None
            await fake.set_user_voice(guild.id, dave.id, channel_id)
            voice = member.voice
            assert (voice.channel.name if voice and voice.channel else None) == channel
            await fake.wait_for(functools.partial(_has_len, moves, step), what="voice event")
        assert moves == [(None, "Lobby"), ("Lobby", "Music"), ("Music", None)], moves
        members = await discord_guild.chunk()
        assert {m.name for m in members} >= {"dave", fake.bot_user.username}
