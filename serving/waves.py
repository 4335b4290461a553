"""The candidates of a request with ``keep``: generated in waves, each scored before the next, until ``keep`` pass.

This is the adaptive budget of `mrgen synthesize --adaptive` (jobs/synthesis/stages/adaptive.py) for one request:
the filter's verdict on a wave decides whether the next is sampled, so a request whose first candidates pass pays
for those alone. Candidate ``i`` keeps seed ``seed + i`` whatever the waves: a request's candidates are a prefix of
what the same request generates at once, and never more than its ``n``. A candidate the generator stopped early
(``serve.filter.early_reject_at``) has no image: it is neither scored nor returned, and counts among ``stopped``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from mrgen.models.selection import CandidateScores
from mrgen.serving.schemas import GenerationJob, GenerationResult


@dataclass
class WaveResult(GenerationResult):
    """Every wave's finished candidates in seed order, their scores (indexed by position among them), and how many
    waves it took (``batch_size``: the most requests one of its waves was sampled with)."""

    scores: list[CandidateScores] = field(default_factory=list)
    waves: int = 0


async def generate_in_waves(job: GenerationJob, keep: int, per_wave: int,
                            generate: Callable[[GenerationJob], Awaitable[GenerationResult]],
                            score: Callable[[np.ndarray, int], Awaitable[dict]]) -> WaveResult:
    """``job``'s candidates ``per_wave`` at a time. ``generate(wave_job)`` samples a wave; ``score(images,
    start_index)`` answers ``{"scores": [CandidateScores], "strict": how many pass the strict thresholds}``
    (`serving.filter.Filter.score`); ``start_index``: the images' position among the request's finished candidates.
    Stops once ``keep`` have passed strictly, or when every seed is used."""
    if per_wave < 1:
        raise ValueError(f"per_wave must be >= 1, got {per_wave}")
    waves: list[GenerationResult] = []
    scores: list[CandidateScores] = []
    passed = 0
    finished = 0
    for start in range(0, len(job.seeds), per_wave):
        wave = await generate(dataclasses.replace(job, seeds=job.seeds[start:start + per_wave]))
        waves.append(wave)
        if not len(wave.images):  # every candidate of the wave stopped early
            continue
        scored = await score(wave.images, finished)
        finished += len(wave.images)
        scores.extend(scored["scores"])
        passed += scored["strict"]
        if passed >= keep:
            break
    return WaveResult(images=np.concatenate([w.images for w in waves]), seeds=[s for w in waves for s in w.seeds],
                      batch_size=max(w.batch_size for w in waves), bundle_id=waves[0].bundle_id, scores=scores,
                      waves=len(waves), stopped=sum(w.stopped for w in waves))
