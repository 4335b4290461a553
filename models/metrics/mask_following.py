"""Do stage-3 *samples* follow their masks? Same-seed samples with each slice's own mask and another slice's.

:func:`mask_dependence` asks whether the controller's denoising loss depends on the mask; this asks whether the
images do. For each masked slice two samples are drawn at the same seed: one with its own mask, one with the
mask of slice ``i + N/2`` (another volume or a distant level). At the positions of the *own* mask's organs the
organ contrast (mean inside the organ minus mean in a ring just outside it) is measured on the real slice and
on both samples. A generator that draws organs where its mask puts them reproduces the real contrast in the
own-mask sample (``error_own`` small) but not in the other-mask sample, whose organs lie elsewhere
(``error_other`` larger); ``following`` = 1 − error_own / error_other (0: the samples ignore their masks).

Contrast asks the samples for the real slice's organ intensities, which a generator may draw in the mask's shape
and still miss (an organ darker or brighter than in that body). :func:`separation_following` asks only whether the
mask a sample was drawn with explains it better than the other mask does: on the pixels of either mask's organs and
a ring around them, the share of the sample's variance that each mask's organ labels explain (η², between-label
over total variance), own minus other, averaged over both samples of a pair. It is exactly 0 for same-seed samples
that ignore their masks (the two samples are then the same image) and needs no intensity to match.

``autoencoder_ceiling`` (and ``separation_ceiling``) is the same score for a perfect diffusion model and
controller, whose samples would be the real slices themselves passed through the bundle's autoencoder (own: slice
``i``'s reconstruction, other: slice ``i + N/2``'s): no sampler can follow masks better than the decoder can draw
organs.

With a ``scorer`` (the filter's promptable segmenter, e.g. LiteMedSAM), :func:`segmenter_following` also asks
whether a pretrained segmenter finds the organs where the mask puts them: prompted with the own mask's organ
boxes, its IoU with the own mask on the real slice (the reference), the own-mask sample and the other-mask sample.
Contrast alone misjudges a generator that draws an organ in the right place with a contrast the real slice does
not have; the segmenter judges shape and place.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from mrgen.models.autoencoder import reconstruct
from mrgen.models.bundle import ModelBundle
from mrgen.models.condition import per_mask
from mrgen.models.metrics.mask_dependence import check_slices, other_slices
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.sampling import SAMPLING_PRESETS, SamplingSettings
from mrgen.models.scorers import Scorer

RING_PX = 3  # width of the ring around an organ that contrast is measured against


def organ_contrasts(images: np.ndarray, masks: np.ndarray, ring: int = RING_PX) -> list[dict[int, float]]:
    """Per image, ``{organ id: mean inside − mean in the ring of width ``ring`` around it}``; the ring excludes
    every organ of the mask, and organs without a ring pixel are left out."""
    out = []
    for image, mask in zip(np.asarray(images, np.float32), np.asarray(masks)):
        contrasts = {}
        for organ in (int(o) for o in np.unique(mask) if o):
            inside = mask == organ
            around = binary_dilation(inside, iterations=ring) & (mask == 0)
            if around.any():
                contrasts[organ] = float(image[inside].mean() - image[around].mean())
        out.append(contrasts)
    return out


def following_errors(real: np.ndarray, own: np.ndarray, other: np.ndarray, masks: np.ndarray,
                     ring: int = RING_PX) -> dict[str, float]:
    """Mean |sample contrast − real contrast| over every (slice, organ) of ``masks``, for the own-mask samples
    and the other-mask samples, both measured at the own mask's organs."""
    ref, a, b = (organ_contrasts(x, masks, ring) for x in (real, own, other))
    pairs = [(r[o], a_[o], b_[o]) for r, a_, b_ in zip(ref, a, b) for o in r]
    if not pairs:
        raise ValueError("no organ with a surrounding ring in the masks: nothing to measure")
    r, a, b = (np.array(col) for col in zip(*pairs))
    error_own, error_other = float(np.abs(a - r).mean()), float(np.abs(b - r).mean())
    return {"organs": len(pairs), "error_own": error_own, "error_other": error_other,
            "following": 1 - error_own / error_other if error_other > 0 else 0.0}


def explained_variance(image: np.ndarray, labels: np.ndarray, region: np.ndarray) -> float:
    """η²: the share of ``image``'s variance over ``region`` that the ``labels`` explain (1 − within / total)."""
    x, lab = image[region].astype(np.float64), labels[region]
    total = float(((x - x.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    within = sum(float(((x[lab == v] - x[lab == v].mean()) ** 2).sum()) for v in np.unique(lab))
    return 1.0 - within / total


def separation_following(own: np.ndarray, other: np.ndarray, masks: np.ndarray, other_masks: np.ndarray,
                         ring: int = RING_PX) -> float:
    """Mean over pairs of ½[(η²(own, M) − η²(own, M')) + (η²(other, M') − η²(other, M))]: how much better each
    sample is explained by the mask it was drawn with (M for ``own``, M' for ``other``) than by the other one, on
    the pixels of either mask's organs dilated by ``ring``. 0 when the samples ignore their masks."""
    scores = []
    for a, b, m, m2 in zip(own, other, np.asarray(masks), np.asarray(other_masks)):
        region = binary_dilation((m > 0) | (m2 > 0), iterations=ring)
        if not region.any():
            continue
        scores.append(0.5 * (explained_variance(a, m, region) - explained_variance(a, m2, region)
                             + explained_variance(b, m2, region) - explained_variance(b, m, region)))
    if not scores:
        raise ValueError("no organ in the masks: nothing to measure")
    return float(np.mean(scores))


def segmenter_following(scorer: Scorer, real: np.ndarray, own: np.ndarray, other: np.ndarray, masks: np.ndarray,
                         organ_maps=None) -> dict[str, float]:
    """Mean IoU (over every slice's present organs) of ``scorer``'s segmentation prompted by the own mask, with the
    own mask, on the real slices, the own-mask and the other-mask samples; ``following_iou`` = (own − other) /
    (real − other): 1 when the samples' organs are found as well as the real ones, 0 when no better than elsewhere."""
    maps = [m if m is not None else {int(i): str(i) for i in np.unique(mask) if i}
            for m, mask in zip(per_mask(organ_maps, len(masks)), masks)]
    ious = {"real": [], "own": [], "other": []}
    for k, mask in enumerate(np.asarray(masks)):
        scored = scorer.score(np.stack([real[k], own[k], other[k]]), mask, maps[k])
        for key, candidate in zip(ious, scored):
            ious[key] += [o.iou for o in candidate.organs if o.present]
    if not ious["real"]:
        raise ValueError("no organ in the masks: nothing to segment")
    out = {f"iou_{key}": float(np.mean(v)) for key, v in ious.items()}
    span = out["iou_real"] - out["iou_other"]
    return {**out, "organs": len(ious["real"]), "scorer": scorer.model_id,
            "following_iou": (out["iou_own"] - out["iou_other"]) / span if span > 0 else 0.0}


def mask_following(bundle: ModelBundle, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str],
                   sampling: SamplingSettings = SAMPLING_PRESETS["default"], organ_maps=None,
                   scorer: Scorer | None = None) -> dict:
    """Same-seed samples for each slice's own mask and for the mask rolled by half the set, and their
    :func:`following_errors` (and :func:`segmenter_following` with a ``scorer``). ``images`` float [N,H,W] in
    [0,1], ``masks`` uint8 [N,H,W], N ≥ 2; ``organ_maps`` (one per mask) for bundles that condition on organ
    names."""
    check_slices(bundle, images, masks, prompts, "mask_following")
    n = len(images)
    others = other_slices(masks)
    pipe = MRGenPipeline(bundle)
    kwargs = {**sampling.kwargs(), "seeds": list(range(n))}
    maps = per_mask(organ_maps, n)
    own = pipe.generate(list(prompts), masks, organ_maps=maps, **kwargs)
    other = pipe.generate(list(prompts), others, organ_maps=other_slices(maps), **kwargs)
    recon = reconstruct(bundle.vae, torch.from_numpy(np.asarray(images, np.float32)))[:, 0].numpy()
    other_recon = other_slices(recon)
    scores = {**following_errors(images, own, other, masks),
              "autoencoder_ceiling": following_errors(images, recon, other_recon, masks)["following"],
              "separation_following": separation_following(own, other, masks, others),
              "separation_ceiling": separation_following(recon, other_recon, masks, others),
              "slices": n, "ring": RING_PX, **sampling.kwargs()}
    if scorer is not None:
        scores["segmenter"] = segmenter_following(scorer, np.asarray(images), own, other, masks, maps)
    return {"own": own, "other": other, "other_masks": others, "scores": scores}

