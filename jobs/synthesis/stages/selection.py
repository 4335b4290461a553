"""Selection stage: the paper's (or the official code's) rule applied to each mask's candidates."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.codec import scores_from_json
from mrgen.models.selection import Thresholds, select, select_unfiltered, strict_passes


class SelectionUDF(StageUDF):
    NAME = "selection"

    def __init__(self, keep: int, rule: str, thresholds: Thresholds, relax_by: float, top_k: int,
                 filtered: bool = True):
        self.keep, self.rule, self.relax_by, self.top_k, self.filtered = keep, rule, relax_by, top_k, filtered
        self.thresholds = thresholds

    def required(self) -> dict[str, str]:
        cols = {"n_candidates": "candidates in the row"}
        if self.filtered:
            cols["scores"] = "per-candidate, per-organ SAM2 scores (JSON)"
        return cols

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        fates, relaxed, strict = [], [], []
        for i in range(len(batch["n_candidates"])):
            n = int(batch["n_candidates"][i])
            if self.filtered:
                cands = scores_from_json(str(batch["scores"][i]))
                sel = select(cands, self.keep, self.rule, self.thresholds, self.relax_by, self.top_k)
                strict.append(strict_passes(cands, self.rule, self.thresholds))
            else:
                sel = select_unfiltered(range(n), self.keep)
                strict.append(0)
            fates.append(json.dumps({str(k): v for k, v in sorted(sel.fates.items())}))
            relaxed.append(bool(sel.relaxed))
        return {"fates": fates, "relaxed": relaxed, "n_strict": strict}
