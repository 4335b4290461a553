"""SAM2 filter deployment: scores one request's candidates per organ and picks those to keep.

Scoring is `mrgen.models.sam2_scorer.Sam2Scorer` (SAM2 loaded once per replica) and the choice is
`mrgen.models.selection.select` with the paper's thresholds, both shared with the offline synthesis job.
"""
from __future__ import annotations

import math

import numpy as np
from ray.serve.metrics import Counter

_CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
            "base": "configs/sam2.1/sam2.1_hiera_b+.yaml", "large": "configs/sam2.1/sam2.1_hiera_l.yaml"}


class Sam2Filter:
    def __init__(self, settings: dict, torch_threads: int = 1, use_gpu: bool = False):
        import torch

        from mrgen.models.sam2_scorer import Sam2Scorer, Sam2Settings
        from mrgen.serving.config import Sam2FilterSettings

        torch.set_num_threads(torch_threads)
        cfg = Sam2FilterSettings.model_validate(settings)
        self.rule = cfg.rule
        self.thresholds, self.relax_by = cfg.thresholds(), cfg.relax_by
        self.scorer = Sam2Scorer(Sam2Settings(
            config_name=_CONFIGS.get(cfg.model, cfg.model), checkpoint=cfg.checkpoint,
            image_size=cfg.image_size or 1024, allow_random=cfg.allow_random,
            device="cuda" if use_gpu and torch.cuda.is_available() else "cpu"))
        self._scored = Counter("mrgen_filter_candidates_total", "candidates scored by SAM2", tag_keys=("fate",))

    def model_id(self) -> str:
        return self.scorer.settings.model_id

    def select(self, images: np.ndarray, mask: np.ndarray, organ_map: dict[int, str], organs: list[str],
               keep: int) -> dict:
        """{"kept": [candidate index, best first], "relaxed": bool, "scores": [per candidate]}."""
        from mrgen.models.selection import KEPT_FATES, select

        scores = self.scorer.score(images, mask, organ_map, organs)
        selection = select(scores, keep=keep, rule=self.rule, thresholds=self.thresholds,
                           relax_by=self.relax_by)
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
                "filter": self.scorer.settings.model_id}
