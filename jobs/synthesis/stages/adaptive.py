"""Adaptive budget: generate candidates in waves and stop a mask once ``keep`` of them pass the strict thresholds.

Generation needs the filter's verdict before the next wave, so this stage holds both the model bundle and SAM2
in one actor (the fixed-budget path keeps them in two pools). Candidate ``i`` has the same seed as in a
fixed-budget run, so an adaptive run's candidates are a prefix of the fixed run's.

With early rejection (``early_reject_at``) the filter also judges each candidate mid-sampling: at that fraction of
the steps it scores the candidate's predicted clean image x̂₀, and a candidate whose mean IoU is below
``early_reject_below`` stops there (``stopped_early``: no image, its index and seed used up, its denoiser rows
counted). A candidate that goes on is the image it would have been without the probe.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrgen.datasets.schema import encode_image
from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.codec import decode_row_mask, scores_to_json
from mrgen.jobs.synthesis.stages.filter import load_scorer, score_row
from mrgen.jobs.synthesis.stages.generator import CandidateSampler, GeneratorUDF, _FaultKnob, row_organ_maps
from mrgen.models.pipeline import EarlyStop
from mrgen.models.sampling import SamplingSettings
from mrgen.models.scorers import ScorerSettings
from mrgen.models.selection import CandidateScores, Thresholds, strict_passes


@dataclass
class _MaskCandidates:
    """One mask's candidates so far, by candidate index (finished ones also in ``images`` / ``scores``)."""

    images: list[np.ndarray] = field(default_factory=list)      # finished images, one array per wave
    scores: list[CandidateScores] = field(default_factory=list)  # finished candidates' filter scores
    seeds: list[int] = field(default_factory=list)               # every candidate tried
    rows: list[int] = field(default_factory=list)                # denoiser rows per candidate tried
    early: list[float | None] = field(default_factory=list)      # x̂₀ mean IoU per candidate (None: not probed)
    stopped: list[int] = field(default_factory=list)             # indices stopped early

    def columns(self) -> dict[str, Any]:
        return {"candidates": encode_image(np.concatenate(self.images)) if self.images else b"",
                "n_candidates": len(self.seeds) - len(self.stopped), "seeds": json.dumps(self.seeds),
                "scores": scores_to_json(self.scores), "denoiser_rows": json.dumps(self.rows),
                "early_mean_iou": json.dumps(self.early), "stopped_early": json.dumps(self.stopped)}


class AdaptiveUDF(StageUDF):
    NAME = "adaptive_generate_filter"
    REQUIRED = {**GeneratorUDF.REQUIRED, "organ_map": "JSON organ id → name", "organs": "organs named for the slice"}

    def __init__(self, bundle_uri: str, candidates: int, wave_size: int, keep: int, rule: str,
                 thresholds: Thresholds, sampling: SamplingSettings, run_seed: int, kind: str,
                 scorer: ScorerSettings, batch_size: int | None = None, torch_threads: int = 1,
                 fault_marker: str | None = None, organ_weights: dict[str, float] | None = None,
                 early_reject_at: float | None = None, early_reject_below: float = 0.0):
        self.gen = CandidateSampler(bundle_uri, sampling, run_seed, batch_size, torch_threads, organ_weights)
        self.scorer = load_scorer(kind, scorer, torch_threads)
        self.candidates, self.wave, self.keep, self.rule = candidates, wave_size, keep, rule
        self.thresholds = thresholds
        self.early_reject_at, self.early_reject_below = early_reject_at, early_reject_below
        self.fault = _FaultKnob(fault_marker)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.fault.tick()
        n = len(batch["prompt"])
        masks = [_MaskCandidates() for _ in range(n)]
        active = [i for i in range(n) if not batch["skip_reason"][i]]
        start = 0
        while active and start < self.candidates:
            indices = range(start, min(start + self.wave, self.candidates))
            wave_seeds = {i: self.gen.seeds(str(batch["source_slice_id"][i]), str(batch["modality"][i]), indices)
                          for i in active}
            early: dict[int, float] = {}  # request row → x̂₀ mean IoU
            result = self.gen.sample([str(batch["prompt"][i]) for i in active],
                                     np.stack([decode_row_mask(batch, i) for i in active]), indices,
                                     [s for i in active for s in wave_seeds[i]], row_organ_maps(batch, active),
                                     early_stop=self._early_stop(batch, active, len(indices), early))
            finished = {int(row): image for row, image in zip(result.finished_rows(), result.images)}
            for k, i in enumerate(active):
                mask = masks[i]
                done, done_indices = [], []
                for j, c in enumerate(indices):
                    row = k * len(indices) + j
                    mask.seeds.append(wave_seeds[i][j])
                    mask.rows.append(int(result.denoiser_rows[row]))
                    mask.early.append(early.get(row))
                    if row in finished:
                        done.append(finished[row])
                        done_indices.append(c)
                    else:
                        mask.stopped.append(c)
                if done:
                    mask.images.append(np.stack(done))
                    mask.scores.extend(_score(self.scorer, batch, i, mask.images[-1], done_indices))
            active = [i for i in active if strict_passes(masks[i].scores, self.rule, self.thresholds) < self.keep]
            start = indices.stop
        columns = [m.columns() for m in masks]
        return {key: [c[key] for c in columns] for key in columns[0]}

    def _early_stop(self, batch: dict[str, np.ndarray], active: list[int], per_mask: int, early: dict[int, float]):
        """The pipeline's ``EarlyStop`` for one wave (None without early rejection): each x̂₀ is scored as a
        finished candidate would be, its mean IoU recorded in ``early``, those below the cut stopped."""
        if self.early_reject_at is None:
            return None

        def judge(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
            keep = np.ones(len(rows), bool)
            for k in sorted({int(r) // per_mask for r in rows}):
                positions = [p for p, r in enumerate(rows) if int(r) // per_mask == k]
                for p, scores in zip(positions, score_row(self.scorer, batch, active[k], images[positions])):
                    mean_iou = scores.probe_iou(self.rule)
                    early[int(rows[p])] = mean_iou
                    keep[p] = mean_iou >= self.early_reject_below
            return keep

        return EarlyStop(self.early_reject_at, judge)


def _score(scorer, batch: dict[str, np.ndarray], i: int, images: np.ndarray,
           indices: list[int]) -> list[CandidateScores]:
    """The filter's scores of one mask's finished ``images``, under their candidate ``indices``."""
    scores = score_row(scorer, batch, i, images)
    for c, index in zip(scores, indices):
        c.index = index
    return scores
