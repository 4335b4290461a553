"""How a mask's candidates and scores travel in a row between stages: the images stacked as MRGen-DB encodes one
(``schema.encode_image``: raw float32 bytes), the scores as JSON. numpy and json only, so the task stages that pack
and publish rows (``records``, ``writer``, ``selection``) start without importing torch or diffusers: a fresh Ray
worker on a busy node took 8 s and 1 GB to import the generator's module for two of its functions."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from mrgen.datasets.schema import decode_mask
from mrgen.models.selection import CandidateScores, OrganScore


def decode_candidates(data: bytes, n: int, h: int, w: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").reshape(n, h, w) if n else np.zeros((0, h, w), np.float32)


def decode_row_mask(batch: dict[str, np.ndarray], i: int) -> np.ndarray:
    return decode_mask(batch["mask"][i], int(batch["height"][i]), int(batch["width"][i]))


def scores_to_json(scores: list[CandidateScores]) -> str:
    return json.dumps([{"index": c.index, "organs": [asdict(o) for o in c.organs]} for c in scores])


def scores_from_json(text: str) -> list[CandidateScores]:
    return [CandidateScores(index=c["index"], organs=[OrganScore(**o) for o in c["organs"]]) for c in json.loads(text)]
