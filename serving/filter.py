"""Filter deployment: scores a request's candidates per organ, wave by wave, and picks those to keep.

Scoring is a `mrgen.models.scorers` scorer (SAM2 or LiteMedSAM, loaded once per replica) and the choice is
`mrgen.models.selection.select` with the configured (or calibrated) thresholds, both shared with the offline
synthesis job. The ingress asks :meth:`Filter.score` for each wave and stops generating once ``keep`` candidates
pass strictly (`mrgen.models.selection.strict_passes`, as synthesis's adaptive budget), then :meth:`Filter.select`
over every candidate scored.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from ray.serve.metrics import Counter

from mrgen.models.scorers import build_scorer
from mrgen.models.selection import KEPT_FATES, CandidateScores, select, strict_passes
from mrgen.serving.config import ServeFilterSettings


class Filter:
    def __init__(self, settings: dict, torch_threads: int = 1, use_gpu: bool = False):
        torch.set_num_threads(torch_threads)
        cfg = ServeFilterSettings.model_validate(settings)
        self.rule = cfg.rule
        self.thresholds, self.relax_by = cfg.thresholds.thresholds(), cfg.thresholds.relax_by
        self.scorer = build_scorer(cfg.kind, cfg.scorer, device="cuda" if use_gpu
                                   and torch.cuda.is_available() else "cpu")
        self._scored = Counter("mrgen_filter_candidates_total", "candidates scored by the filter", tag_keys=("fate",))

    def model_id(self) -> str:
        return self.scorer.model_id

    def describe(self) -> dict:
        """The scorer, rule and thresholds this replica filters with."""
        return {"model": self.scorer.model_id, "rule": self.rule, "relax_by": self.relax_by,
                "thresholds": dataclasses.asdict(self.thresholds)}

    def score(self, images: np.ndarray, mask: np.ndarray, organ_map: dict[int, str], organs: list[str],
              start_index: int = 0) -> dict:
        """{"scores": [CandidateScores of ``images``, indices from ``start_index``], "strict": how many pass}."""
        scores = self.scorer.score(images, mask, organ_map, organs, start_index=start_index)
        return {"scores": scores, "strict": strict_passes(scores, self.rule, self.thresholds)}

    def probe(self, images: np.ndarray, mask: np.ndarray, organ_map: dict[int, str], organs: list[str]) -> list[float]:
        """Early rejection's verdict on predicted clean images x̂₀: each one's mean IoU (0 where no organ is found)."""
        return [c.probe_iou(self.rule) for c in self.scorer.score(images, mask, organ_map, organs)]

    def select(self, scores: list[CandidateScores], keep: int) -> dict:
        """{"kept": [candidate index, best first], "relaxed": bool, "scores": [per candidate], "filter": model id}."""
        selection = select(scores, keep=keep, rule=self.rule, thresholds=self.thresholds, relax_by=self.relax_by)
        for fate in selection.fates.values():
            self._scored.inc(tags={"fate": fate})
        rows = []
        for c in scores:
            mean_iou = c.mean_iou(self.rule)
            rows.append({"index": c.index, "fate": selection.fates[c.index],
                         "kept": selection.fates[c.index] in KEPT_FATES,
                         "mean_iou": None if math.isnan(mean_iou) else float(mean_iou),
                         "organs": {o.organ: {"iou": float(o.iou), "conf": float(o.conf)} for o in c.organs}})
        return {"kept": list(selection.kept), "relaxed": selection.relaxed, "scores": rows,
                "filter": self.scorer.model_id}
