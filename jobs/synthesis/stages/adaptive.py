"""Adaptive budget: generate candidates in waves and stop a mask once ``keep`` of them pass the strict thresholds.

Generation needs the filter's verdict before the next wave, so this stage holds both the model bundle and SAM2
in one actor (the fixed-budget path keeps them in two pools). Candidate ``i`` has the same seed as in a
fixed-budget run, so an adaptive run's candidates are a prefix of the fixed run's.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.generator import (CandidateSampler, GeneratorUDF, _FaultKnob, decode_row_mask,
                                                   encode_candidates, row_organ_maps)
from mrgen.jobs.synthesis.stages.filter import load_scorer, score_row, scores_to_json
from mrgen.models.sampling import SamplingSettings
from mrgen.models.scorers import ScorerSettings
from mrgen.models.selection import Thresholds, strict_passes


class AdaptiveUDF(StageUDF):
    NAME = "adaptive_generate_filter"
    REQUIRED = {**GeneratorUDF.REQUIRED, "organ_map": "JSON organ id → name", "organs": "organs named for the slice"}

    def __init__(self, bundle_uri: str, candidates: int, wave_size: int, keep: int, rule: str,
                 thresholds: Thresholds, sampling: SamplingSettings, run_seed: int, kind: str,
                 scorer: ScorerSettings, batch_size: int | None = None, torch_threads: int = 1,
                 fault_marker: str | None = None, organ_weights: dict[str, float] | None = None):
        self.gen = CandidateSampler(bundle_uri, sampling, run_seed, batch_size, torch_threads, organ_weights)
        self.scorer = load_scorer(kind, scorer, torch_threads)
        self.candidates, self.wave, self.keep, self.rule = candidates, wave_size, keep, rule
        self.thresholds = thresholds
        self.fault = _FaultKnob(fault_marker)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.fault.tick()
        n = len(batch["prompt"])
        images: dict[int, list[np.ndarray]] = {i: [] for i in range(n)}
        scores: dict[int, list] = {i: [] for i in range(n)}
        seeds: dict[int, list[int]] = {i: [] for i in range(n)}
        active = [i for i in range(n) if not batch["skip_reason"][i]]
        start = 0
        while active and start < self.candidates:
            indices = range(start, min(start + self.wave, self.candidates))
            wave_seeds = {i: self.gen.seeds(str(batch["source_slice_id"][i]), str(batch["modality"][i]), indices)
                          for i in active}
            out = self.gen.generate([str(batch["prompt"][i]) for i in active],
                                    np.stack([decode_row_mask(batch, i) for i in active]), indices,
                                    [s for i in active for s in wave_seeds[i]], row_organ_maps(batch, active))
            for k, i in enumerate(active):
                wave_images = out[k * len(indices):(k + 1) * len(indices)]
                images[i].append(wave_images)
                seeds[i].extend(wave_seeds[i])
                scores[i].extend(score_row(self.scorer, batch, i, wave_images, start_index=start))
            active = [i for i in active if strict_passes(scores[i], self.rule, self.thresholds) < self.keep]
            start = indices.stop
        return {"candidates": [encode_candidates(np.concatenate(images[i])) if images[i] else b"" for i in range(n)],
                "n_candidates": [len(seeds[i]) for i in range(n)],
                "seeds": [json.dumps(seeds[i]) for i in range(n)],
                "scores": [scores_to_json(scores[i]) for i in range(n)]}
