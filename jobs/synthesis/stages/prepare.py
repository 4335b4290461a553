"""Masks → work items: one row per (source mask, target modality), with its prompt, key and skip reason.

A mask that cannot be used is not dropped silently: its row carries ``skip_reason`` (too small, organ ids the
organ map does not name, a size the model does not generate) and passes through the later stages untouched,
so the writer records it in the audit table exactly once.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrgen.datasets.prompt import PromptRecipe
from mrgen.datasets.schema import decode_organ_map
from mrgen.jobs.synthesis.keys import mask_key
from mrgen.jobs.synthesis.stages.base import StageUDF, column, optional_text
from mrgen.models.condition import MaskCondition

SOURCE_COLUMNS = ["slice_id", "dataset", "volume_id", "slice_index", "region", "organs", "height", "width", "mask",
                  "organ_map", "pixel_spacing", "source_file", "source_sha256"]
# organs and pixel_spacing travel as JSON text (lists in object columns would be pickled by Ray Data)
OUTPUT_COLUMNS = ["mask_key", "source_slice_id", "source_dataset", "volume_id", "slice_index", "modality",
                  "modality_attributes", "region", "organs", "prompt", "height", "width", "mask", "organ_map",
                  "pixel_spacing", "source_file", "source_sha256", "skip_reason"]


def skip_reason(mask: np.ndarray, organ_map: dict[int, str], resolution: int, min_area: float,
                condition: MaskCondition | None = None) -> str:
    """Why a mask cannot condition generation ("" when it can)."""
    h, w = mask.shape
    if (h, w) != (resolution, resolution):
        return f"mask is {h}x{w} but the model generates {resolution}x{resolution}"
    ids = [int(i) for i in np.unique(mask) if i != 0]
    missing = [i for i in ids if i not in organ_map]
    if missing:
        return f"mask holds organ ids {missing} missing from its organ_map {organ_map}"
    unknown = condition.unknown([organ_map[i] for i in ids]) if condition is not None else []
    if unknown:
        return (f"organ(s) {unknown} not in the generator's vocabulary {sorted(condition.organs)}: it was never "
                "trained on them")
    area = float((mask != 0).mean())
    if area < min_area:
        return f"mask covers {area:.2%} of the image, below the minimum {min_area:.2%}"
    return ""


class PrepareUDF(StageUDF):
    NAME = "prepare"
    REQUIRED = {c: "MRGen-DB slice column" for c in SOURCE_COLUMNS}
    ONE_TO_ONE = False

    def __init__(self, modalities: dict[str, str], resolution: int, min_area: float,
                 wanted: Sequence[str] | None = None, done: Sequence[str] = (), condition: dict[str, Any] | None = None,
                 prompt_template: str = "mrgen"):
        self.modalities = modalities  # target label → attribute text
        self.recipe = PromptRecipe(prompt_template)  # the release's prompts name the dataset's labels (organ map)
        self.condition = MaskCondition.from_manifest(condition or {})
        self.resolution, self.min_area = resolution, min_area
        self.wanted = set(wanted) if wanted is not None else None
        self.done = set(done)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = {c: [] for c in OUTPUT_COLUMNS}
        for i, sid in enumerate(batch["slice_id"]):
            sid = str(sid)
            if self.wanted is not None and sid not in self.wanted:
                continue
            h, w = int(batch["height"][i]), int(batch["width"][i])
            raw = batch["mask"][i]
            organ_text = str(batch["organ_map"][i])
            try:
                organ_map = decode_organ_map(organ_text)
            except ValueError as exc:
                organ_map, bad_map = {}, f"organ_map is not valid JSON ({exc})"
            else:
                bad_map = ""
            organs = [str(o) for o in (batch["organs"][i] if batch["organs"][i] is not None else [])]
            region = optional_text(batch["region"][i])
            for modality, attributes in self.modalities.items():
                key = mask_key(sid, modality)
                if key in self.done:
                    continue
                if raw is None or len(raw) != h * w:
                    reason = f"row {sid}: mask has {0 if raw is None else len(raw)} bytes for {h}x{w}"
                else:
                    mask = np.frombuffer(raw, dtype=np.uint8).reshape(h, w)
                    reason = bad_map or skip_reason(mask, organ_map, self.resolution, self.min_area, self.condition)
                row = {"mask_key": key, "source_slice_id": sid, "source_dataset": str(batch["dataset"][i]),
                       "volume_id": str(batch["volume_id"][i]), "slice_index": int(batch["slice_index"][i]),
                       "modality": modality, "modality_attributes": attributes, "region": region,
                       "organs": json.dumps(organs),
                       "prompt": self.recipe.render(modality, attributes, region, organs, list(organ_map.values())),
                       "height": h, "width": w,
                       "mask": bytes(raw) if raw is not None else b"", "organ_map": organ_text,
                       "pixel_spacing": json.dumps([float(x) for x in batch["pixel_spacing"][i]]),
                       "source_file": str(batch["source_file"][i]), "source_sha256": str(batch["source_sha256"][i]),
                       "skip_reason": reason}
                for c in OUTPUT_COLUMNS:
                    out[c].append(row[c])
        return {c: column(v) for c, v in out.items()}
