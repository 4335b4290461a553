"""SAM2 filter stage: each actor loads SAM2 once; per candidate one image embedding, all organs prompted on it."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from mrgen.datasets.schema import decode_organ_map
from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.generator import decode_candidates, decode_row_mask, pick_device
from mrgen.models.selection import CandidateScores, OrganScore


def scores_to_json(scores: list[CandidateScores]) -> str:
    return json.dumps([{"index": c.index, "organs": [asdict(o) for o in c.organs]} for c in scores])


def scores_from_json(text: str) -> list[CandidateScores]:
    return [CandidateScores(index=c["index"], organs=[OrganScore(**o) for o in c["organs"]]) for c in json.loads(text)]


def build_scorer(sam2: dict[str, Any], torch_threads: int = 1):
    import torch

    from mrgen.models.sam2_scorer import Sam2Scorer, Sam2Settings

    torch.set_num_threads(torch_threads)
    return Sam2Scorer(Sam2Settings(config_name=sam2["config_name"], checkpoint=sam2.get("checkpoint"),
                                   image_size=sam2["image_size"], prompt=sam2.get("prompt", "mask"),
                                   embed_batch=sam2.get("embed_batch", 4), allow_random=sam2.get("random", False),
                                   device=pick_device()))


def score_row(scorer, batch: dict[str, np.ndarray], i: int, images: np.ndarray, start_index: int = 0) -> list[CandidateScores]:
    organs = json.loads(str(batch["organs"][i]))
    return scorer.score(images, decode_row_mask(batch, i), decode_organ_map(str(batch["organ_map"][i])), organs,
                        start_index=start_index)


class Sam2FilterUDF(StageUDF):
    NAME = "sam2_filter"
    REQUIRED = {"candidates": "float32 candidate images (raw bytes)", "n_candidates": "candidates in the row",
                "mask": "uint8 organ ids (raw bytes)", "organ_map": "JSON organ id → name",
                "organs": "organs named for the slice", "height": "rows", "width": "columns"}

    def __init__(self, sam2: dict[str, Any], torch_threads: int = 1):
        self.scorer = build_scorer(sam2, torch_threads)

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
