"""core.normalize against real ffmpeg, checked with an independent loudness meter.

Every output is metered by ``audiogen.meter`` (ffmpeg's ebur128 filter, parsed by the test
helper itself) and its Ogg/Opus structure is parsed with discord.py's Ogg reader.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus

from core.audio import InvalidAudioError, get_audio_duration, get_file_hash, probe_audio
from core.ffmpeg import FFmpegError
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
