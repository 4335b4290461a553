"""Stage 1: the 1-channel autoencoder (diffusers ``AutoencoderKL``, latent 16, ×8), its loss and augmentation.

Images enter every function here in ``[0, 1]`` (the MRGen-DB range) as ``[B, H, W]`` or ``[B, 1, H, W]``; the
autoencoder itself works in ``[-1, 1]``. Latents handed to the diffusion model are multiplied by the measured
``latent_scaling`` (1/std of the latents; the SD constant 0.18215 is wrong for a new 16-channel autoencoder).
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL

KL_WEIGHT = 1e-4  # γ, paper §4.1


def build_autoencoder(cfg: dict[str, Any]) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` from ``ModelConfig.vae``."""
    return AutoencoderKL(**cfg)


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` → ``[B, 1, H, W]`` float."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be [B, H, W] or [B, 1, H, W], got shape {tuple(images.shape)}")
    return images.float() if not images.is_floating_point() else images


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    return as_batch(images) * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float = KL_WEIGHT,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE(reconstruction) + γ·KL(posterior ‖ N(0, 1)); ``parts`` holds the detached ``mse`` and ``kl``."""
    x = to_model_range(images).to(vae.dtype)
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    mse = torch.nn.functional.mse_loss(recon.float(), x.float())
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element, comparable across sizes
    loss = mse + kl_weight * kl
    return loss, {"mse": mse.detach(), "kl": kl.detach()}


def augment(images: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per image, one of: horizontal flip, vertical flip, rotation by 90/180/270°."""
    x = as_batch(images)
    out = x.clone()
    apply = torch.rand(x.shape[0], generator=generator) < p
    choice = torch.randint(0, 5, (x.shape[0],), generator=generator)
    for i in torch.nonzero(apply).flatten().tolist():
        img, k = x[i], int(choice[i])
        if k == 0:
            out[i] = img.flip(-1)
        elif k == 1:
            out[i] = img.flip(-2)
        else:
            out[i] = torch.rot90(img, k - 1, dims=(-2, -1))  # 90, 180, 270
    return out


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, latent_scaling: float,
                   generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """Images in [0, 1] → scaled latents ``z · latent_scaling`` for the diffusion model."""
    dist = vae.encode(to_model_range(images).to(device=vae.device, dtype=vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return z * latent_scaling


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, latent_scaling: float) -> torch.Tensor:
    """Scaled latents → images in [0, 1], ``[B, 1, H, W]`` float32."""
    x = vae.decode((latents / latent_scaling).to(device=vae.device, dtype=vae.dtype)).sample
    return from_model_range(x.float())


@torch.no_grad()
def measure_latent_scaling(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 16,
                           generator: torch.Generator | None = None) -> float:
    """1 / std of the autoencoder's (sampled) latents over ``images``: the factor saved with the bundle."""
    latents = [encode_latents(vae, images[i:i + batch_size], 1.0, generator).float().flatten()
               for i in range(0, len(images), batch_size)]
    std = torch.cat(latents).std().item()
    if not std > 0:
        raise ValueError(f"latent std is {std}: cannot derive a latent scaling factor")
    return 1.0 / std


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → the autoencoder's reconstructions (posterior mode), ``[B, 1, H, W]`` float32 on CPU."""
    x = to_model_range(images).to(device=vae.device, dtype=vae.dtype)
    return from_model_range(vae.decode(vae.encode(x).latent_dist.mode()).sample.float()).cpu()
