"""Filter stage: each actor loads the scorer (SAM2 or LiteMedSAM, ``models.scorers``) once; per candidate one image
embedding, all organs prompted on it."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from mrgen.datasets.schema import decode_organ_map
from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.codec import decode_candidates, decode_row_mask, scores_to_json
from mrgen.jobs.synthesis.stages.generator import pick_device
from mrgen.models.scorers import ScorerSettings, build_scorer
from mrgen.models.selection import CandidateScores


def load_scorer(kind: str, scorer: ScorerSettings, torch_threads: int = 1):
    torch.set_num_threads(torch_threads)
    return build_scorer(kind, scorer, device=pick_device())


def score_row(scorer, batch: dict[str, np.ndarray], i: int, images: np.ndarray,
              start_index: int = 0) -> list[CandidateScores]:
    organs = json.loads(str(batch["organs"][i]))
    return scorer.score(images, decode_row_mask(batch, i), decode_organ_map(str(batch["organ_map"][i])), organs,
                        start_index=start_index)


class FilterUDF(StageUDF):
    NAME = "filter"
    REQUIRED = {"candidates": "float32 candidate images (raw bytes)", "n_candidates": "candidates in the row",
                "mask": "uint8 organ ids (raw bytes)", "organ_map": "JSON organ id → name",
                "organs": "organs named for the slice", "height": "rows", "width": "columns"}

    def __init__(self, kind: str, scorer: ScorerSettings, torch_threads: int = 1):
        self.scorer = load_scorer(kind, scorer, torch_threads)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = []
        for i in range(len(batch["n_candidates"])):
            n = int(batch["n_candidates"][i])
            if n == 0:
                out.append("[]")
                continue
            images = decode_candidates(batch["candidates"][i], n, int(batch["height"][i]), int(batch["width"][i]))
            out.append(scores_to_json(score_row(self.scorer, batch, i, images)))
        return {"scores": out}
