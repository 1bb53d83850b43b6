"""core.normalize against real ffmpeg, checked with an independent loudness meter.

Every output is metered by ``audiogen.meter`` (ffmpeg's ebur128 filter, parsed by the test
helper itself) and its Ogg/Opus structure is parsed with discord.py's Ogg reader.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from pathlib import Path

import pytest
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus

from core.audio import (
    InvalidAudioError,
    get_audio_duration,
    get_file_hash,
    interpret_decode,
    probe_audio,
)
from core.ffmpeg import FFmpegError, FFmpegResult, FFmpegTimeoutError
from core.normalize import (
    LIMIT_TOLERANCE_LU,
    BatchItem,
    LoudnessTarget,
    NormalizeOptions,
    NormalizeResult,
    measure_loudness,
    normalize_batch,
    normalize_file,
)
from core.storage import TEMP_PREFIX
from tests.core import audiogen

TARGET_I = -23.0
TARGET_TP = -2.0
I_TOLERANCE = 1.0  # LU
TP_TOLERANCE = 0.5  # dB over the target


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return audiogen.corpus(tmp_path_factory.getbasetemp() / "audio-corpus")


@pytest.fixture(scope="session")
async def normalized(
    corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, NormalizeResult]:
    """Every audio case (and silence, and a blip) normalized once, as one batch."""
    out = tmp_path_factory.mktemp("normalized")
    names = [*audiogen.AUDIO_CASES, "silence", "blip"]
    items = await normalize_batch([(corpus[n], out / f"{n}.ogg") for n in names])
    failed = {n: i.error for n, i in zip(names, items, strict=True) if not i.ok}
    assert not failed, failed
    return {n: i.result for n, i in zip(names, items, strict=True) if i.result is not None}


def assert_valid_discord_opus(path: Path, expected_ms: float) -> None:
    info = audiogen.opus_stream_info(path)
    assert info.channels == 2
    assert info.input_sample_rate == 48000
    assert info.packet_durations_us == {20_000}, "every Opus packet must be one 20 ms frame"
    assert abs(info.duration_s * 1000 - expected_ms) <= 30
    tagged = OggOpus(path)
    assert tagged.info.channels == 2
    assert abs(tagged.info.length * 1000 - expected_ms) <= 30


def assert_on_target(path: Path, i_tolerance: float = I_TOLERANCE) -> audiogen.Loudness:
    reading = audiogen.meter(path)
    assert abs(reading.integrated - TARGET_I) <= i_tolerance, reading
    assert reading.true_peak <= TARGET_TP + TP_TOLERANCE, reading
    return reading


# --- the two-pass default -------------------------------------------------------------------


@pytest.mark.parametrize("case", audiogen.AUDIO_CASES)
def test_output_is_on_target(normalized: dict[str, NormalizeResult], case: str) -> None:
    assert_on_target(normalized[case].dst)
    assert not normalized[case].silent


@pytest.mark.parametrize("case", audiogen.AUDIO_CASES)
def test_output_is_discord_ready_opus(
    normalized: dict[str, NormalizeResult], corpus: dict[str, Path], case: str
) -> None:
    result = normalized[case]
    input_ms = probe_audio(corpus[case]).duration_ms
    assert_valid_discord_opus(result.dst, input_ms)
    assert abs(result.duration_ms - input_ms) <= 30


@pytest.mark.parametrize("case", audiogen.AUDIO_CASES)
def test_result_describes_the_output_file(
    normalized: dict[str, NormalizeResult], case: str
) -> None:
    result = normalized[case]
    assert result.sha256 == get_file_hash(result.dst)
    assert result.size == result.dst.stat().st_size
    assert result.duration_ms == get_audio_duration(result.dst)
    assert result.measurement is not None and result.measurement.usable
    assert result.input is not None and result.input.duration_ms > 0
    leftovers = [p.name for p in result.dst.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("case", "method"),
    [
        ("speech", "gain"),
        ("loud_music", "gain"),
        ("quiet", "gain"),
        ("clipped", "gain"),
        ("mono_8k", "gain"),
        ("peaky", "limit"),  # peak-to-loudness ratio ~25 dB: gain alone would clip
        ("peaky_1s", "limit"),  # and shorter than loudnorm's 3 s window
        ("isp_fits", "gain"),  # borderline: true peak checked while encoding, fits
        ("isp_over", "limit"),  # sample peak fits, true peak does not: caught, then limited
    ],
)
def test_method_chosen(normalized: dict[str, NormalizeResult], case: str, method: str) -> None:
    assert normalized[case].method == method


def test_gains_follow_the_input_level(normalized: dict[str, NormalizeResult]) -> None:
    quiet, loud = normalized["quiet"], normalized["loud_music"]
    assert quiet.measurement is not None and loud.measurement is not None
    assert abs(quiet.measurement.input_i - -45.0) <= 0.5
    assert quiet.gain_db is not None and abs(quiet.gain_db - 22.0) <= 0.5
    assert loud.measurement.input_i > -10 and loud.measurement.input_sample_peak > -1
    assert loud.gain_db is not None and loud.gain_db < -13


def test_true_peak_screening(normalized: dict[str, NormalizeResult]) -> None:
    # Far under the ceiling: no true peak needed. Borderline: measured while encoding.
    speech = normalized["speech"].measurement
    fits = normalized["isp_fits"].measurement
    over = normalized["isp_over"].measurement
    assert speech is not None and math.isnan(speech.input_tp)
    assert fits is not None and over is not None
    assert fits.input_tp > fits.input_sample_peak + 1.5  # the inter-sample peaks were seen
    assert over.input_tp > over.input_sample_peak + 1.5


def test_limited_outputs_are_within_the_limiter_tolerance(
    normalized: dict[str, NormalizeResult],
) -> None:
    for case in ("peaky", "peaky_1s", "isp_over"):
        reading = audiogen.meter(normalized[case].dst)
        assert abs(reading.integrated - TARGET_I) <= LIMIT_TOLERANCE_LU + 0.2, (case, reading)
        assert reading.true_peak <= TARGET_TP, (case, reading)


def test_silence_is_kept_and_flagged(normalized: dict[str, NormalizeResult]) -> None:
    result = normalized["silence"]
    assert result.silent and result.method == "silent"
    assert result.gain_db == 0.0
    assert result.measurement is not None and not result.measurement.usable
    reading = audiogen.meter(result.dst)
    assert reading.integrated <= -69.9 and reading.true_peak == -math.inf
    assert_valid_discord_opus(result.dst, 3000)


def test_blip_shorter_than_a_loudness_block_is_not_silence(
    normalized: dict[str, NormalizeResult],
) -> None:
    # 250 ms is less than one 400 ms gating block: measured padded, it still gets a gain.
    result = normalized["blip"]
    assert not result.silent and result.method in ("gain", "limit")
    reading = audiogen.meter(result.dst)
    assert -40 < reading.true_peak <= TARGET_TP + TP_TOLERANCE
    assert_valid_discord_opus(result.dst, 250)


def test_input_resolutions_are_converted(normalized: dict[str, NormalizeResult]) -> None:
    assert normalized["mono_8k"].input is not None
    assert normalized["mono_8k"].input.sample_rate == 8000
    assert normalized["mono_8k"].input.channels == 1
    assert normalized["stereo_96k"].input is not None
    assert normalized["stereo_96k"].input.sample_rate == 96000
    for case in ("mono_8k", "stereo_96k"):
        out = probe_audio(normalized[case].dst)
        assert (out.codec, out.sample_rate, out.channels) == ("opus", 48000, 2)


async def test_output_is_deterministic(corpus: dict[str, Path], tmp_path: Path) -> None:
    first = await normalize_file(corpus["speech"], tmp_path / "a.ogg")
    second = await normalize_file(corpus["speech"], tmp_path / "b.ogg")
    assert first.sha256 == second.sha256


async def test_true_peak_always_measured_when_screening_is_off(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    options = NormalizeOptions(screen_true_peak=False)
    for case, method in (("speech", "gain"), ("isp_over", "limit"), ("peaky", "limit")):
        result = await normalize_file(corpus[case], tmp_path / f"{case}.ogg", options)
        assert result.method == method
        assert result.measurement is not None and math.isfinite(result.measurement.input_tp)
        assert_on_target(result.dst)


@pytest.mark.slow
async def test_five_minute_input(tmp_path: Path) -> None:
    ten = audiogen.speech(tmp_path / "ten.wav", seconds=10.0, channels=2)
    src = audiogen.repeat(ten, tmp_path / "long.mp3", times=30)
    result = await normalize_file(src, tmp_path / "long.ogg")
    assert result.method == "gain"
    assert_on_target(result.dst)
    assert_valid_discord_opus(result.dst, 300_000)


# --- other targets and formats ----------------------------------------------------------------


async def test_custom_target(corpus: dict[str, Path], tmp_path: Path) -> None:
    target = LoudnessTarget(integrated=-16.0, true_peak=-1.0, lra=11.0)
    result = await normalize_file(
        corpus["loud_music"], tmp_path / "music.ogg", NormalizeOptions(target=target)
    )
    reading = audiogen.meter(result.dst)
    assert abs(reading.integrated - -16.0) <= I_TOLERANCE
    assert reading.true_peak <= -1.0 + TP_TOLERANCE


@pytest.mark.parametrize("case", ["speech", "loud_music", "peaky"])
async def test_mp3_output(corpus: dict[str, Path], tmp_path: Path, case: str) -> None:
    result = await normalize_file(
        corpus[case], tmp_path / f"{case}.mp3", NormalizeOptions(output_format="mp3")
    )
    assert_on_target(result.dst)
    tagged = MP3(result.dst)
    assert tagged.info.sample_rate == 48000
    assert tagged.info.channels == 2
    assert abs(tagged.info.length * 1000 - 4000) <= 60
    assert probe_audio(result.dst).codec == "mp3"


@pytest.mark.parametrize("case", ["speech", "loud_music", "quiet", "stereo_96k"])
async def test_one_pass(corpus: dict[str, Path], tmp_path: Path, case: str) -> None:
    result = await normalize_file(
        corpus[case], tmp_path / f"{case}.ogg", NormalizeOptions(two_pass=False)
    )
    assert result.method == "loudnorm-1pass" and result.gain_db is None
    assert result.measurement is not None and result.measurement.usable
    # loudnorm's dynamic mode alone is looser than the two-pass path (1-1.5 LU on speech).
    assert_on_target(result.dst, i_tolerance=2.0)
    assert_valid_discord_opus(result.dst, 4000)


async def test_one_pass_silence(corpus: dict[str, Path], tmp_path: Path) -> None:
    result = await normalize_file(
        corpus["silence"], tmp_path / "s.ogg", NormalizeOptions(two_pass=False)
    )
    assert result.silent and result.method == "silent"
    assert_valid_discord_opus(result.dst, 3000)


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="format"):
        NormalizeOptions(output_format="wav")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Opus"):
        NormalizeOptions(sample_rate=44100)
    with pytest.raises(ValueError, match="bitrate"):
        NormalizeOptions(bitrate="loud")
    with pytest.raises(ValueError, match="channels"):
        NormalizeOptions(channels=6)
    with pytest.raises(ValueError, match="true peak"):
        LoudnessTarget(true_peak=3.0)
    with pytest.raises(ValueError, match="integrated"):
        LoudnessTarget(integrated=0.0)
    assert NormalizeOptions(output_format="mp3", sample_rate=44100).sample_rate == 44100


# --- measuring --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["speech", "loud_music", "quiet", "peaky", "stereo_96k"])
async def test_ebur128_and_loudnorm_measurements_agree(corpus: dict[str, Path], case: str) -> None:
    fast = await measure_loudness(corpus[case])
    classic = await measure_loudness(corpus[case], method="loudnorm")
    assert abs(fast.input_i - classic.input_i) <= 0.5
    assert abs(fast.input_tp - classic.input_tp) <= 0.5
    assert fast.input_sample_peak <= fast.input_tp + 0.1
    assert abs(fast.target_offset - (TARGET_I - fast.input_i)) < 1e-9


async def test_measure_quiet_and_silent(corpus: dict[str, Path]) -> None:
    quiet = await measure_loudness(corpus["quiet"])
    assert abs(quiet.input_i - -45.0) <= 0.3
    assert quiet.usable
    for method in ("ebur128", "loudnorm"):
        silent = await measure_loudness(corpus["silence"], method=method)  # type: ignore[arg-type]
        assert not silent.usable


async def test_measure_mono_as_played_in_stereo(corpus: dict[str, Path]) -> None:
    # ffmpeg spreads mono over two channels at -3 dB: same loudness, 3 dB lower peaks.
    stereo = await measure_loudness(corpus["speech"])
    mono = await measure_loudness(corpus["speech"], channels=1)
    assert abs(stereo.input_i - mono.input_i) <= 0.2
    assert abs((mono.input_tp - stereo.input_tp) - 3.0) <= 0.2


@pytest.mark.parametrize("case", ["empty", "text", "png", "truncated", "missing"])
async def test_measure_rejects_invalid_input(corpus: dict[str, Path], case: str) -> None:
    with pytest.raises(InvalidAudioError) as caught:
        await measure_loudness(corpus[case])
    assert audiogen.INVALID_CASES[case] in caught.value.reason


# --- failures, atomicity, batches -------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(audiogen.INVALID_CASES))
@pytest.mark.parametrize("two_pass", [True, False])
async def test_invalid_input_is_rejected_and_leaves_nothing(
    corpus: dict[str, Path], tmp_path: Path, case: str, two_pass: bool
) -> None:
    dst = tmp_path / "out" / "sound.ogg"
    with pytest.raises(InvalidAudioError) as caught:
        await normalize_file(corpus[case], dst, NormalizeOptions(two_pass=two_pass))
    assert audiogen.INVALID_CASES[case] in caught.value.reason
    assert list(dst.parent.iterdir()) == []


async def test_failure_keeps_the_previous_output(corpus: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "sound.ogg"
    dst.write_bytes(b"previous version")
    with pytest.raises(InvalidAudioError):
        await normalize_file(corpus["truncated"], dst)
    assert dst.read_bytes() == b"previous version"
    result = await normalize_file(corpus["speech"], dst)
    assert dst.read_bytes() != b"previous version"
    assert get_file_hash(dst) == result.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sound.ogg"]


async def test_timeout_leaves_nothing(corpus: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "sound.ogg"
    with pytest.raises(FFmpegError):
        await normalize_file(corpus["stereo_96k"], dst, NormalizeOptions(timeout=0.001))
    assert list(tmp_path.iterdir()) == []


async def test_cancellation_leaves_nothing(tmp_path: Path) -> None:
    ten = audiogen.speech(tmp_path / "ten.wav", seconds=10.0, channels=2)
    src = audiogen.repeat(ten, tmp_path / "long.wav", times=12)
    out = tmp_path / "out"
    task = asyncio.create_task(normalize_file(src, out / "long.ogg"))
    for _ in range(200):  # wait until the encode has started writing its temporary file
        await asyncio.sleep(0.02)
        if out.exists() and any(out.iterdir()):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(out.iterdir()) == []


async def test_batch_keeps_order_reports_errors_and_progress(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    names = ["speech", "text", "loud_music", "missing", "png", "silence", "short_1s"]
    seen: list[tuple[int, int, BatchItem]] = []

    def progress(done: int, total: int, item: BatchItem) -> None:
        seen.append((done, total, item))

    items = await normalize_batch(
        [(corpus[n], tmp_path / f"{n}.ogg") for n in names],
        concurrency=3,
        progress=progress,
    )
    assert [i.src for i in items] == [corpus[n] for n in names]
    assert [i.ok for i in items] == [True, False, True, False, False, True, True]
    for name, item in zip(names, items, strict=True):
        if item.ok:
            assert item.result is not None and item.result.dst.exists()
            assert item.error is None
        else:
            assert item.result is None and item.error
            assert audiogen.INVALID_CASES[name] in item.error
            assert not item.dst.exists()
    assert [done for done, _, _ in seen] == list(range(1, len(names) + 1))
    assert {total for _, total, _ in seen} == {len(names)}
    assert {id(item) for _, _, item in seen} == {id(item) for item in items}


async def test_batch_survives_a_failing_progress_callback(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    def explode(done: int, total: int, item: BatchItem) -> None:
        raise RuntimeError("progress bar fell over")

    items = await normalize_batch(
        [(corpus["short_1s"], tmp_path / "a.ogg"), (corpus["speech"], tmp_path / "b.ogg")],
        concurrency=1,
        progress=explode,
    )
    assert all(item.ok for item in items)


async def test_batch_concurrency_is_bounded(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.normalize as module

    running = peak = 0
    real = module.normalize_file

    async def counting(*args: object, **kwargs: object) -> NormalizeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            running -= 1

    monkeypatch.setattr(module, "normalize_file", counting)
    pairs = [(corpus["short_1s"], tmp_path / f"{i}.ogg") for i in range(6)]
    items = await normalize_batch(pairs, concurrency=2)
    assert all(item.ok for item in items)
    assert peak == 2


async def test_empty_batch() -> None:
    assert await normalize_batch([]) == []


# --- the decoded copy, batch workers, pass 1 alongside an encode ------------------------------


def _hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def _copy_owner(pcm: Path) -> str:
    """The case name a decoded copy was made for (".tmp-<case>.ogg.<token>.pcm")."""
    return pcm.name.removeprefix(TEMP_PREFIX).split(".", 1)[0]


def _same_result(batch: NormalizeResult, alone: NormalizeResult) -> None:
    assert (batch.sha256, batch.size, batch.duration_ms, batch.method, batch.gain_db) == (
        alone.sha256,
        alone.size,
        alone.duration_ms,
        alone.method,
        alone.gain_db,
    )
    assert batch.measurement == alone.measurement
    assert batch.input == alone.input


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_batch_gives_exactly_what_normalize_file_gives(
    corpus: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    concurrency: int,
) -> None:
    # A batch worker runs the pass 1 of its next file in the same ffmpeg process as the encode
    # of the current one. Corrupt, truncated and bogus next files must neither disturb the
    # encode they ride along with nor get a result or error other than their own.
    import core.normalize as module

    names = [
        "speech",
        "corrupt_middle",
        "loud_music",
        "truncated",
        "quiet",
        "text",
        "m4a",
        "png",
        "silence",
        "stereo_96k",
        "blip",
        "vorbis",
    ]
    read = module._read_alongside
    alongside: list[tuple[str, bool]] = []

    def spy(stderr: str, pcm: Path, options: NormalizeOptions) -> object:
        prepared = read(stderr, pcm, options)
        alongside.append((_copy_owner(pcm), prepared is not None))
        return prepared

    monkeypatch.setattr(module, "_read_alongside", spy)
    items = await normalize_batch(
        [(corpus[n], tmp_path / "batch" / f"{n}.ogg") for n in names], concurrency=concurrency
    )
    monkeypatch.setattr(module, "_read_alongside", read)
    for name, item in zip(names, items, strict=True):
        try:
            alone = await normalize_file(corpus[name], tmp_path / "alone" / f"{name}.ogg")
        except InvalidAudioError as exc:
            assert item.error == exc.reason, name
            continue
        assert item.result is not None, (name, item.error)
        _same_result(item.result, alone)
    assert _hidden_files(tmp_path) == []
    accepted = {name for name, ok in alongside if ok}
    assert accepted, "no pass 1 ran alongside an encode"
    assert not accepted & {"corrupt_middle", "truncated"}
    if concurrency == 1:  # one worker, in order: the next file rides along each plain encode
        assert ("corrupt_middle", False) in alongside  # after speech: rejected, measured alone
        assert ("truncated", False) in alongside  # after loud_music
        assert ("stereo_96k", True) in alongside  # after silence: used
        # "text" went alongside quiet's encode but could not even be opened, which failed that
        # run: the encode ran again alone. "png" fails the cheap checks, so it never goes.
        assert not {"text", "png"} & {name for name, _ in alongside}


@pytest.mark.parametrize("failure", ["exit code", "timeout"])
async def test_failed_run_with_a_file_alongside_encodes_again_alone(
    corpus: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    import core.normalize as module

    real = module.run_ffmpeg
    failed = 0

    async def flaky(args: list[str], *, timeout: float | None) -> FFmpegResult:
        nonlocal failed
        if "[p1]" in args:  # an encode with the next file's pass 1 alongside
            failed += 1
            if failure == "timeout":
                raise FFmpegTimeoutError("simulated timeout")
            return FFmpegResult(1, "[error] simulated failure")
        return await real(args, timeout=timeout)

    monkeypatch.setattr(module, "run_ffmpeg", flaky)
    names = ["speech", "loud_music", "quiet"]
    items = await normalize_batch(
        [(corpus[n], tmp_path / "batch" / f"{n}.ogg") for n in names], concurrency=1
    )
    assert failed == 2
    for name, item in zip(names, items, strict=True):
        assert item.result is not None, item.error
        alone = await normalize_file(corpus[name], tmp_path / "alone" / f"{name}.ogg")
        _same_result(item.result, alone)
    assert _hidden_files(tmp_path) == []


def test_input_log_keeps_one_input_and_refuses_unattributed_errors() -> None:
    from core.normalize import _input_log

    log = "\n".join(
        [
            "[in#0 @ 0x1] [verbose] Skipping 0 bytes of junk at 670.",
            "[info] Input #0, f32le, from 'file:/x/.a.pcm':",
            "[info]   Duration: 00:00:10.00, bitrate: 3072 kb/s",
            "[info]   Stream #0:0: Audio: pcm_f32le, 48000 Hz, stereo, flt, 3072 kb/s",
            "[in#1/aac @ 0x2] [warning] Estimating duration from bitrate, this may be inaccurate",
            "[info] Input #1, aac, from 'file:/x/b.aac':",
            "[info]   Duration: 00:00:03.76, bitrate: 65 kb/s",
            "[info]   Stream #1:0: Audio: aac (LC), 44100 Hz, mono, fltp, 65 kb/s",
            "[out#0/ogg @ 0x6] [verbose] Adding streams from explicit maps...",
            "[info] Stream mapping:",
            "[info]   Stream #1:0 (aac) -> aformat:default",
            "[aist#1:0/aac @ 0x3] [dec:aac @ 0x4] [verbose] Decoder thread received EOF packet",
            "[in#0/f32le @ 0x5] [verbose]   Input stream #0:0 (audio): 118 packets read "
            "(3840000 bytes); 118 frames decoded; 0 decode errors (480000 samples); ",
            "[in#1/aac @ 0x2] [verbose]   Input stream #1:0 (audio): 88 packets read "
            "(17626 bytes); 87 frames decoded; 0 decode errors (165888 samples); ",
        ]
    )
    view = _input_log(log, 1)
    assert view is not None
    assert "Input #0, aac, from 'file:/x/b.aac'" in view
    assert "Stream #0:0: Audio: aac" in view
    assert "Input stream #0:0 (audio): 88 packets" in view
    assert "Estimating duration" in view
    assert "f32le" not in view and "Stream mapping" not in view
    info = interpret_decode(FFmpegResult(0, view))
    assert (info.codec, info.container, info.sample_rate, info.channels) == ("aac", "aac", 44100, 1)
    assert info.duration_ms == 3762

    # An error line that names no input could be input #1's: refuse to vouch for it.
    assert _input_log(log + "\n[mp3float @ 0x9] [error] Header missing", 1) is None
    assert _input_log(log + "\n[... 12 lines of ffmpeg output dropped ...]", 1) is None
    # Input #1's own errors are kept (and reject it); those of the encode are not its business.
    own = _input_log(log + "\n[aist#1:0/aac @ 0x3] [dec:aac @ 0x4] [error] Invalid data", 1)
    assert own is not None and "[error] Invalid data" in own
    with pytest.raises(InvalidAudioError, match="corrupt"):
        interpret_decode(FFmpegResult(0, own))
    other = _input_log(log + "\n[aost#0:0/libopus @ 0x7] [error] not ours", 1)
    assert other is not None and "not ours" not in other


async def test_long_input_is_decoded_again_for_pass_2(
    corpus: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    normalized: dict[str, NormalizeResult],
) -> None:
    # Decoded copies are capped (PCM_MAX_SECONDS); longer inputs are measured in full all the
    # same, and pass 2 decodes them again.
    import core.normalize as module

    copies: list[Path | None] = []
    real = module._two_pass

    async def spy(src: Path, tmp: Path, prepared: object, *args: object) -> object:
        copies.append(prepared.pcm)  # type: ignore[attr-defined]
        return await real(src, tmp, prepared, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_two_pass", spy)
    monkeypatch.setattr(module, "PCM_MAX_SECONDS", 2.0)
    result = await normalize_file(corpus["speech"], tmp_path / "speech.ogg")  # 4 s
    assert copies == [None]
    assert result.measurement == normalized["speech"].measurement
    assert_on_target(result.dst)
    assert_valid_discord_opus(result.dst, 4000)
    short = await normalize_file(corpus["short_1s"], tmp_path / "short.ogg")
    assert copies[1] is not None and not copies[1].exists()  # used, then removed
    assert_on_target(short.dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.ogg", "speech.ogg"]


async def test_failure_to_write_the_decoded_copy_is_not_blamed_on_the_input(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.normalize as module

    monkeypatch.setattr(module, "_pcm_path", lambda dst: tmp_path / "no-such-folder" / "x.pcm")
    with pytest.raises(FFmpegError, match="could not write the decoded audio"):
        await normalize_file(corpus["speech"], tmp_path / "out" / "speech.ogg")
    assert list((tmp_path / "out").iterdir()) == []


def test_worker_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.normalize as module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
    assert module._worker_cpus(1) == [None]  # fewer workers than CPUs: let ffmpeg spread
    assert module._worker_cpus(2) == [2, 3]
    assert module._worker_cpus(3) == [2, 3, 2]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert module._worker_cpus(2) == [None, None]

    def unsupported(pid: int) -> set[int]:
        raise OSError("not here")

    monkeypatch.setattr(os, "sched_getaffinity", unsupported, raising=False)
    assert module._worker_cpus(2) == [None, None]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and 2 CPUs",
)
@pytest.mark.parametrize("pinned", [True, False])
async def test_batch_workers_pin_the_ffmpeg_processes_they_start(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned: bool
) -> None:
    import core.normalize as module

    cpus = os.sched_getaffinity(0)
    masks: list[frozenset[int]] = []
    real = module.run_ffmpeg

    async def spy(args: list[str], *, timeout: float | None) -> FFmpegResult:
        masks.append(frozenset(os.sched_getaffinity(0)))  # what the child inherits
        return await real(args, timeout=timeout)

    monkeypatch.setattr(module, "run_ffmpeg", spy)
    workers = len(cpus) if pinned else len(cpus) - 1
    items = await normalize_batch(
        [(corpus["short_1s"], tmp_path / f"{i}.ogg") for i in range(2 * workers)],
        concurrency=workers,
    )
    assert all(item.ok for item in items)
    assert os.sched_getaffinity(0) == cpus  # the caller's thread is left alone
    if pinned:
        assert {len(mask) for mask in masks} == {1}
        assert frozenset().union(*masks) == cpus
    else:
        assert set(masks) == {frozenset(cpus)}


async def test_batch_progress_is_reported_on_the_callers_loop(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    loop, thread = asyncio.get_running_loop(), threading.get_ident()
    calls: list[tuple[bool, bool]] = []

    def progress(done: int, total: int, item: BatchItem) -> None:
        calls.append((asyncio.get_running_loop() is loop, threading.get_ident() == thread))

    await normalize_batch(
        [(corpus["short_1s"], tmp_path / f"{i}.ogg") for i in range(3)],
        concurrency=2,
        progress=progress,
    )
    assert calls == [(True, True)] * 3


def _child_processes() -> list[int]:
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == me:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_batch_cancellation_leaves_nothing(tmp_path: Path) -> None:
    ten = audiogen.speech(tmp_path / "ten.wav", seconds=10.0, channels=2)
    src = audiogen.repeat(ten, tmp_path / "long.wav", times=6)
    out = tmp_path / "out"
    before = set(_child_processes())
    task = asyncio.create_task(
        normalize_batch([(src, out / f"{i}.ogg") for i in range(6)], concurrency=2)
    )
    for _ in range(300):  # wait until the workers have files in the making
        await asyncio.sleep(0.02)
        if out.exists() and len(list(out.iterdir())) >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(out.iterdir()) == []
    assert set(_child_processes()) <= before  # every ffmpeg was killed and reaped
