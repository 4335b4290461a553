import numpy as np
import pytest
import torch

from mrgen.models.bundle import build_random_bundle
from mrgen.models.autoencoder import reconstruct
from mrgen.models.metrics.mask_following import (explained_variance, following_errors, mask_following,
                                                 organ_contrasts, separation_following)
from mrgen.models.sampling import SamplingSettings

torch.set_num_threads(1)


def _drawn(masks: np.ndarray, levels: dict[int, float], background: float = 0.5) -> np.ndarray:
    """Images in which each organ id is painted at its level on a flat background."""
    images = np.full(masks.shape, background, np.float32)
    for organ, level in levels.items():
        images[masks == organ] = level
    return images


def _masks(n=4, size=32) -> np.ndarray:
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        masks[i, 4 + 5 * i:12 + 5 * i, 6:14] = 1  # a box moving down the image
        masks[i, 20:26, 18 + i:24 + i] = 2
    return masks


def test_contrast_is_inside_minus_ring_around_excluding_other_organs():
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 4:8, 4:8] = 1
    mask[0, 4:8, 8:10] = 2  # touches organ 1: its pixels must not count as organ 1's surroundings
    image = np.full((1, 16, 16), 0.1, np.float32)
    image[0, 4:8, 4:8] = 0.9
    image[0, 4:8, 8:10] = 0.5
    image[0, 12:, 12:] = 1.0  # far outside both rings
    (c,) = organ_contrasts(image, mask, ring=2)
    assert c == {1: pytest.approx(0.8), 2: pytest.approx(0.4)}


def test_samples_that_draw_organs_at_their_mask_follow_and_ones_that_ignore_it_do_not():
    masks = _masks()
    levels = {1: 0.9, 2: 0.2}
    real = _drawn(masks, levels)
    others = np.roll(masks, len(masks) // 2, axis=0)
    following = following_errors(real, _drawn(masks, levels), _drawn(others, levels), masks)
    assert following["error_own"] == pytest.approx(0.0, abs=1e-6) and following["error_other"] > 0.1
    assert following["following"] == pytest.approx(1.0)
    assert following["organs"] == 2 * len(masks)
    same = _drawn(masks[:1].repeat(len(masks), 0), levels)  # one image whatever the mask
    ignoring = following_errors(real, same, same, masks)
    assert ignoring["following"] == 0.0


def test_explained_variance_is_the_labels_share_of_the_variance():
    labels = np.array([[0, 0, 1, 1]])
    region = np.ones_like(labels, bool)
    assert explained_variance(np.array([[0.2, 0.2, 0.8, 0.8]]), labels, region) == pytest.approx(1.0)
    assert explained_variance(np.array([[0.2, 0.8, 0.2, 0.8]]), labels, region) == pytest.approx(0.0)
    assert explained_variance(np.full((1, 4), 0.5), labels, region) == 0.0  # a flat image: nothing to explain


def test_separation_sees_organs_drawn_in_their_mask_whatever_their_intensity():
    masks = _masks()
    others = np.roll(masks, len(masks) // 2, axis=0)
    real = _drawn(masks, {1: 0.9, 2: 0.2})
    swapped = {1: 0.3, 2: 0.7}  # the right shapes in intensities the real images do not have
    own, other = _drawn(masks, swapped), _drawn(others, swapped)
    assert following_errors(real, own, other, masks)["following"] < 0.5  # contrast calls it poor following
    drawn = separation_following(own, other, masks, others)
    assert drawn > 0.3
    assert drawn == pytest.approx(separation_following(real, _drawn(others, {1: 0.9, 2: 0.2}), masks, others), abs=0.15)
    rng = np.random.default_rng(0)
    same = rng.random(masks.shape).astype(np.float32)  # one image per seed whatever the mask
    assert separation_following(same, same, masks, others) == 0.0
    blurred = 0.5 * own + 0.5 * rng.random(masks.shape).astype(np.float32)
    assert 0 < separation_following(blurred, 0.5 * other + 0.5 * rng.random(masks.shape), masks, others) < drawn


def test_no_organ_to_measure_is_an_error():
    empty = np.zeros((2, 16, 16), np.uint8)
    images = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="no organ"):
        following_errors(images, images, images, empty)
    with pytest.raises(ValueError, match="no organ"):
        separation_following(images, images, empty, empty)


def test_mask_following_samples_same_seeds_with_own_and_rolled_masks():
    bundle = build_random_bundle("tiny", seed=0)
    masks = np.zeros((4, 64, 64), np.uint8)
    for i in range(4):
        masks[i, 8 + 10 * i:24 + 10 * i, 10:40] = 1 + i % 2
    images = _drawn(masks, {1: 0.8, 2: 0.3})
    run = mask_following(bundle, images, masks, ["T1 MRI"] * 4, SamplingSettings(steps=2, guidance=1.5, sampler="ddim"))
    assert run["own"].shape == run["other"].shape == (4, 64, 64)
    np.testing.assert_array_equal(run["other_masks"], np.roll(masks, 2, axis=0))
    assert not np.array_equal(run["own"], run["other"])  # a random controller reacts to the mask
    scores = run["scores"]
    assert scores["slices"] == 4 and scores["organs"] == 4
    assert scores["following"] == 1 - scores["error_own"] / scores["error_other"]
    recon = reconstruct(bundle.vae, torch.from_numpy(images))[:, 0].numpy()
    assert recon.shape == images.shape and 0 <= recon.min() and recon.max() <= 1
    assert scores["autoencoder_ceiling"] == following_errors(images, recon, np.roll(recon, 2, axis=0),
                                                             masks)["following"]
    assert scores["separation_following"] == separation_following(run["own"], run["other"], masks, run["other_masks"])
    assert scores["separation_ceiling"] == separation_following(recon, np.roll(recon, 2, axis=0), masks,
                                                                run["other_masks"])
