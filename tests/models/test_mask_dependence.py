import numpy as np
import torch

from mrgen.models.bundle import build_random_bundle
from mrgen.models.mask_controller import MaskController
from mrgen.models.configs import model_config
from mrgen.models.metrics.mask_dependence import mask_dependence

torch.set_num_threads(1)


def _slices(n=6, size=64):
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):  # each slice its own organ boxes
        y, x = 4 + 6 * i, 40 - 5 * i
        masks[i, y:y + 18, x:x + 14] = 1 + i % 3
    return images, masks, [f"T1 MRI; slice {i}" for i in range(n)]


def test_a_controller_that_reacts_to_masks_shows_a_gap():
    bundle = build_random_bundle("tiny", seed=0)
    result = mask_dependence(bundle, *_slices())
    assert result["slices"] == 6
    assert result["mse_true"] != result["mse_shuffled"] and result["mse_true"] != result["mse_empty"]
    assert result["gain"] == 1 - result["mse_true"] / result["mse_shuffled"]


def test_a_fresh_controller_ignores_masks_exactly():
    bundle = build_random_bundle("tiny", seed=0)
    bundle.controlnet = MaskController.from_unet(bundle.unet, model_config("tiny").controlnet).eval()
    result = mask_dependence(bundle, *_slices())
    assert result["mse_true"] == result["mse_shuffled"] == result["mse_empty"]
    assert result["gain"] == 0
    # zero-initialised outputs add nothing: the controller's losses are the UNet's own
    assert abs(result["mse_unet"] - result["mse_true"]) < 1e-6


def test_other_masks_come_from_the_far_half_of_the_set():
    """Slices in slice-id order: neighbours share near-identical masks, so "another slice's mask" must come from
    the other half (a roll by one would compare a mask mostly with itself)."""
    bundle = build_random_bundle("tiny", seed=0)
    images, masks, prompts = _slices()
    masks[1:3], masks[4:6] = masks[0], masks[3]  # two "volumes" of three identical masks each
    a = mask_dependence(bundle, images, masks, prompts)
    swapped = np.concatenate([masks[3:], masks[:3]])
    b = mask_dependence(bundle, images, swapped, prompts)
    assert abs(a["mse_shuffled"] - b["mse_true"]) < 1e-6 and a["mse_true"] != a["mse_shuffled"]


def test_is_deterministic_and_independent_of_batch_size():
    bundle = build_random_bundle("tiny", seed=1)
    a = mask_dependence(bundle, *_slices(), batch_size=32)
    b = mask_dependence(bundle, *_slices(), batch_size=4)
    assert abs(a["mse_true"] - b["mse_true"]) < 1e-5 and abs(a["gain"] - b["gain"]) < 1e-4
