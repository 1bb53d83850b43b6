"""Runs the loudness normalizer over sounds with the configured targets and format."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.models import Sound
from core.normalize import (
    BatchItem,
    LoudnessTarget,
    NormalizeOptions,
    NormalizeResult,
    normalize_batch,
)

log = logging.getLogger(__name__)


@dataclass
class NormalizeOutcome:
    sound_id: int
    name: str
    result: NormalizeResult | None = None
    error: str | None = None
    output_path: Path | None = None
    sound: Sound | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Normalizer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.extension = f".{settings.normalized_audio_format.value}"

    def options(self, *, one_pass: bool = False) -> NormalizeOptions:
        s = self.settings
        return NormalizeOptions(
            target=LoudnessTarget(
                integrated=s.loudness_target_i,
                true_peak=s.loudness_target_tp,
                lra=s.loudness_target_lra,
            ),
            output_format=s.normalized_audio_format.value,
            bitrate=s.normalized_audio_bitrate,
            two_pass=not one_pass and s.normalized_audio_passes == 2,
        )

    async def run(
        self,
        jobs: Sequence[tuple[Sound, Path, Path]],
        *,
        force: bool = False,
        one_pass: bool = False,
        progress: Callable[[int, int, NormalizeOutcome], None] | None = None,
    ) -> list[NormalizeOutcome]:
        """Normalize each (sound, original, output) job; one bad file never stops the batch."""
        todo = [job for job in jobs if force or not job[0].is_normalized]
        outcomes = {
            job[0].id: NormalizeOutcome(job[0].id or 0, job[0].name, output_path=job[2])
            for job in todo
        }
        skipped = [
            NormalizeOutcome(s.id or 0, s.name, error=None, sound=s)
            for s, _, _ in jobs
            if not (force or not s.is_normalized)
        ]
        by_src = {(str(src), str(dst)): sound for sound, src, dst in todo}

        def on_item(done: int, total: int, item: BatchItem) -> None:
            sound = by_src[(str(item.src), str(item.dst))]
            outcome = outcomes[sound.id]
            outcome.result, outcome.error = item.result, item.error
            if item.error:
                log.warning("normalize failed sound=%s reason=%s", sound.id, item.error)
            if progress is not None:
                progress(done, total, outcome)

        await normalize_batch(
            [(src, dst) for _, src, dst in todo],
            self.options(one_pass=one_pass),
            progress=on_item,
        )
        return [outcomes[job[0].id] for job in todo] + skipped
