"""Does a mask controller use its masks? Denoising loss with the true masks against other slices' masks.

For held-out masked slices the noise and timesteps are fixed (timesteps spread evenly over the schedule) and
the ε-prediction MSE of UNet + controller is computed three times: with each slice's own mask, with an empty
condition, and with the masks rolled by half the set (slice ``i`` gets the mask of slice ``i + N/2``: with slices
in slice-id order that is another volume or a distant level, not the near-identical neighbour a roll by one
would give). A controller that follows its masks has ``mse_true`` clearly below ``mse_shuffled``;
``gain`` = 1 − true / shuffled. One that ignores them gives identical numbers. ``mse_unet`` is the UNet alone
(no controller): a controller whose ``mse_empty`` lies far below it but close to ``mse_true`` has mostly learnt
a mask-independent correction of an undertrained UNet rather than to follow masks.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mrgen.models.autoencoder import encode_latents
from mrgen.models.bundle import ModelBundle
from mrgen.models.condition import MaskCondition, per_mask
from mrgen.models.scheduler import build_scheduler


def other_slices(x):
    """Slice ``i`` gets slice ``i + N/2``'s entry (another volume or a distant level, not a near-identical
    neighbour): how "another slice's mask" is chosen here and in ``mask_following``. An array or a list."""
    if isinstance(x, list):
        shift = len(x) // 2
        return x[-shift:] + x[:-shift] if shift else list(x)
    return np.roll(x, len(x) // 2, axis=0)


def check_slices(bundle: ModelBundle, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], who: str) -> None:
    if bundle.controlnet is None:
        raise ValueError(f"{who} needs a bundle with a controlnet part")
    n = len(images)
    if n < 2 or len(masks) != n or len(prompts) != n:
        raise ValueError(f"need >= 2 slices with one mask and prompt each, got {n} images, {len(masks)} masks, "
                         f"{len(prompts)} prompts")


@torch.no_grad()
def mask_dependence(bundle: ModelBundle, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str],
                    seed: int = 0, batch_size: int = 32, organ_maps=None) -> dict[str, float]:
    """``images`` float [N,H,W] in [0,1], ``masks`` uint8 organ ids [N,H,W] (N ≥ 2), one prompt each;
    ``organ_maps`` (id → name, one per mask or one for all) for bundles that condition on organ names."""
    check_slices(bundle, images, masks, prompts, "mask_dependence")
    n = len(images)
    device, dtype = bundle.unet.device, bundle.unet.dtype
    scheduler = build_scheduler("ddpm", bundle.scheduler_config)
    total_t = scheduler.config.num_train_timesteps
    condition = MaskCondition.from_manifest(bundle.manifest)
    maps = per_mask(organ_maps, n)
    variants = {"true": (masks, maps), "empty": (np.zeros_like(masks), maps),
                "shuffled": (other_slices(masks), other_slices(maps))}
    sums = dict.fromkeys([*variants, "unet"], 0.0)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        latents = encode_latents(bundle.vae, torch.from_numpy(np.asarray(images[sl])).to(device),
                                 bundle.latent_scaling, sample=False).float()
        noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed + i))
                             for i in range(sl.start, sl.stop)]).to(device)  # per slice: batching changes nothing
        t = ((torch.arange(sl.start, sl.stop) + 0.5) * (total_t / n)).long().to(device)
        noisy = scheduler.add_noise(latents, noise, t).to(dtype)
        text = bundle.text_encoder.encode(list(prompts[sl])).to(device, dtype)
        for name, (variant, variant_maps) in variants.items():
            cond = condition.encode(variant[sl], variant_maps[sl]).to(device, dtype)
            down, mid = bundle.controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            pred = bundle.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
            sums[name] += float(((pred.float() - noise) ** 2).mean(dim=(1, 2, 3)).sum())
        pred = bundle.unet(noisy, t, encoder_hidden_states=text).sample
        sums["unet"] += float(((pred.float() - noise) ** 2).mean(dim=(1, 2, 3)).sum())
    result = {f"mse_{k}": v / n for k, v in sums.items()}
    result["gain"] = 1 - result["mse_true"] / result["mse_shuffled"]
    result["slices"] = n
    return result
