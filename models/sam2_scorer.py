"""SAM2 as the quality filter of generated candidates (paper §3.5, appendix C.2); pure PyTorch, no Ray.

For each candidate image the SAM2 image embedding is computed once (``SAM2ImagePredictor.set_image_batch``),
then every organ of the condition mask is prompted against that embedding in one mask-decoder call
(one prompt per organ, the image embedding repeated, as SAM2's own batched-points path does). Per organ we
record the IoU between SAM2's segmentation and the organ's condition mask, and SAM2's confidence (its
predicted IoU of the mask it returns).

Prompts (``prompt``): ``mask`` (default; the organ's condition mask as low-resolution logits),
``box`` (the organ's bounding box) or ``mask+box``.

Loading (``ScorerSettings``): the real ``sam2`` package, a config name (``configs/sam2.1/sam2.1_hiera_l.yaml``
for SAM2.1-Large, the paper's model; ``configs/sam2/sam2_hiera_l.yaml`` for the SAM2.0 checkpoint the official
release filters with), an image size (1024 at paper scale; smaller sizes re-size the predictor's feature maps),
and a checkpoint file holding ``{"model": state_dict}`` (the official format; loaded ``weights_only``).
Without a checkpoint the model is random and its scores mean nothing: that needs ``random=True``.
``multimask`` asks for SAM2's three masks per prompt and keeps the best-scored one (the release's setting).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mrgen.models.scorer_base import (ScorerLoadError, ScorerSettings, local_checkpoint, organ_boxes, organ_targets,
                                      score_chunks)
from mrgen.models.selection import CandidateScores, OrganScore
# sam2 and hydra where a SAM2 is built: models.flops reads this module without them

MASK_LOGIT = 10.0  # magnitude of the logits a binary organ mask is turned into


class Sam2LoadError(ScorerLoadError):
    pass


def build_sam2_model(settings: ScorerSettings, device: str = "cpu") -> torch.nn.Module:
    """``sam2.build_sam.build_sam2`` with Hydra's global state saved, set to SAM2's configs and restored."""
    if settings.checkpoint is None and not settings.random:
        raise Sam2LoadError("no SAM2 checkpoint given: pass one (a {'model': state_dict} file, --scorer-checkpoint), "
                            "or ask for an untrained SAM2 explicitly (--scorer-random, or --sam2-random); its scores "
                            "are then meaningless")
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    global_hydra = GlobalHydra.instance()
    saved = global_hydra.hydra
    global_hydra.clear()
    try:
        initialize_config_module("sam2", version_base="1.2")
        from sam2.build_sam import build_sam2

        size = settings.image_size or 1024
        overrides = [] if size == 1024 else [f"++model.image_size={size}"]
        ckpt = local_checkpoint(settings.checkpoint, Sam2LoadError, "SAM2") if settings.checkpoint else None
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # an untrained SAM2 is the same in every actor and run
                model = build_sam2(settings.sam2_config(), ckpt_path=ckpt, device=device,
                                   hydra_overrides_extra=overrides)
        except RuntimeError as exc:  # sam2 raises a bare RuntimeError on missing/unexpected keys
            raise Sam2LoadError(f"SAM2 checkpoint {settings.checkpoint} does not match config {settings.sam2_config()} "
                                f"at image size {size}: {exc or 'missing or unexpected keys'}") from exc
        finally:
            if ckpt and settings.checkpoint and ckpt != settings.checkpoint and ckpt.startswith(tempfile.gettempdir()):
                os.unlink(ckpt)
        return model
    finally:
        global_hydra.clear()
        if saved is not None:
            global_hydra.initialize(saved)


def to_sam_image(image: np.ndarray) -> np.ndarray:
    """Gray float [0,1] (H, W) → uint8 H×W×3, the RGB form SAM2's transforms expect.

    The official release's filter multiplies its already 8-bit image by 255 and casts back to uint8, which wraps
    around (grey ``x`` → ``256 − x``: SAM2 scores a negative); that is not copied here."""
    gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    u8 = np.round(gray * 255.0).astype(np.uint8)
    return np.repeat(u8[:, :, None], 3, axis=2)


class Sam2Scorer:
    """Loads SAM2 once; :meth:`score` rates candidates of one mask, :meth:`score_many` several masks."""

    def __init__(self, settings: ScorerSettings, device: str = "cpu"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.settings = settings
        self.prompt = settings.prompt or "mask"
        self.model = build_sam2_model(settings, device)
        self.predictor = SAM2ImagePredictor(self.model)
        s = settings.image_size or 1024
        self.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.mask_input_size = tuple(self.model.sam_prompt_encoder.mask_input_size)
        self.model_id = settings.model_id("sam2")
        self.meaningful = settings.meaningful("sam2")

    # ------------------------------------------------------------ prompts
    def _organ_prompts(self, mask: np.ndarray, organ_ids: Sequence[int]):
        h, w = mask.shape
        binary = torch.from_numpy(np.stack([(mask == i) for i in organ_ids]).astype(np.float32))  # [K,H,W]
        masks = boxes = None
        if "mask" in self.prompt:
            low = F.interpolate(binary[:, None], size=self.mask_input_size, mode="bilinear", align_corners=False)
            masks = ((low > 0.5).float() * 2 - 1) * MASK_LOGIT  # [K,1,s,s]
        if "box" in self.prompt:
            boxes = self.predictor._transforms.transform_boxes(torch.from_numpy(organ_boxes(mask, organ_ids)),
                                                               normalize=True, orig_hw=(h, w))
        device = self.predictor.device
        return (binary.bool().to(device), None if masks is None else masks.to(device),
                None if boxes is None else boxes.to(device))

    @torch.no_grad()
    def _decode(self, img_idx: int, masks: torch.Tensor | None, boxes: torch.Tensor | None, hw: tuple[int, int]):
        """All organ prompts against image ``img_idx``'s embedding in one decoder call."""
        model = self.model
        points = None
        if boxes is not None:
            labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.shape[0], 1)
            points = (boxes.reshape(-1, 2, 2), labels)
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        feats = self.predictor._features
        high_res = [level[img_idx].unsqueeze(0) for level in feats["high_res_feats"]]
        low_res, iou_pred, _, _ = model.sam_mask_decoder(
            image_embeddings=feats["image_embed"][img_idx].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=self.settings.multimask, repeat_image=True, high_res_features=high_res)
        best = iou_pred.argmax(dim=1)  # multimask: the mask SAM2 scores best, as SAM2ImagePredictor users pick it
        rows = torch.arange(len(best), device=best.device)
        low_res, iou_pred = low_res[rows, best][:, None], iou_pred[rows, best]
        full = self.predictor._transforms.postprocess_masks(low_res, hw)  # [K,1,H,W] logits
        return full[:, 0] > self.predictor.mask_threshold, iou_pred

    # ------------------------------------------------------------ scoring
    def score(self, images: np.ndarray, mask: np.ndarray, organ_map: Mapping[int, str],
              organs: Sequence[str] | None = None, start_index: int = 0) -> list[CandidateScores]:
        """Scores of ``images`` [N,H,W] (candidates of one mask) against ``mask`` [H,W] (organ ids).

        ``organs`` are the organs the slice names (default: those in the mask); a named organ without pixels is
        recorded as absent (IoU and confidence 0) and the selection rule decides what that means.
        """
        mask = np.asarray(mask)
        found = organ_targets(mask, organ_map, organs)
        scored_ids = found[2]
        hw = tuple(mask.shape)
        targets, prompt_masks, prompt_boxes = self._organ_prompts(mask,
                                                                  scored_ids) if scored_ids else (None, None, None)
        return score_chunks(images, self.settings, self.predictor.device, found, targets, start_index,
                            lambda chunk: self.predictor.set_image_batch([to_sam_image(im) for im in chunk]),
                            lambda _, j: self._decode(j, prompt_masks, prompt_boxes, hw))

    def score_reference(self, image: np.ndarray, mask: np.ndarray, organ_map: Mapping[int, str]) -> CandidateScores:
        """The straightforward algorithm (benchmark baseline): ``set_image`` and ``predict`` once per organ."""
        present_ids = [int(i) for i in np.unique(mask) if i != 0]
        organ_scores = []
        for oid in present_ids:
            target = torch.from_numpy(mask == oid)
            _, masks, _ = self._organ_prompts(mask, [oid])
            box = None
            if "box" in self.prompt:
                ys, xs = np.nonzero(mask == oid)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            with self.settings.autocast(self.predictor.device):
                self.predictor.set_image(to_sam_image(image))
                pred, conf, _ = self.predictor.predict(mask_input=masks[0].cpu().numpy() if masks is not None
                                                       else None, box=box, multimask_output=self.settings.multimask)
            best = int(np.argmax(conf))
            pred, conf = pred[best:best + 1], conf[best:best + 1]
            pred_t = torch.from_numpy(pred[0] > 0)
            inter, union = float((pred_t & target).sum()), float((pred_t | target).sum())
            organ_scores.append(OrganScore(organ_map[oid], inter / union if union else 0.0, float(conf[0])))
        return CandidateScores(index=0, organs=organ_scores)
