"""What each stage trains, keeps frozen, and minimises (paper §3.4).

A :class:`StageTask` holds the trainable module (handed to DeepSpeed) and the frozen parts (kept outside the
engine, ``requires_grad`` off, eval mode, never in a checkpoint), and computes the loss of a decoded batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mrgen.models.autoencoder import augment, build_autoencoder, encode_latents, vae_loss
from mrgen.models.configs import ModelConfig
from mrgen.models.condition import MaskCondition
from mrgen.models.mask_controller import MaskController, augment_pairs
from mrgen.models.scheduler import build_scheduler
from mrgen.models.unet import build_unet, drop_prompts


class VaeObjective(nn.Module):
    """The autoencoder wrapped so that DeepSpeed's forward returns its loss (MSE + γ·KL on augmented images)."""

    def __init__(self, vae: nn.Module, kl_weight: float, augment_p: float):
        super().__init__()
        self.vae, self.kl_weight, self.augment_p = vae, kl_weight, augment_p

    def forward(self, images: torch.Tensor):
        images = augment(images, self.augment_p) if self.augment_p > 0 else images
        return vae_loss(self.vae, images.to(self.vae.device), self.kl_weight)


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def state_hash(module: nn.Module) -> str:
    """sha256 over a state dict's names and exact bytes (frozen weights must not change by a single bit)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if tensor.numel() else b"")
    return h.hexdigest()


@dataclass
class StageTask:
    stage: str
    trainable: nn.Module
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    latent_scaling: float = 1.0
    prompt_drop_p: float = 0.0
    scheduler: Any = None
    condition: MaskCondition = field(default_factory=MaskCondition)
    pair_augment_p: float = 0.0  # controller stage: joint affine augmentation of image and mask
    timesteps: str = "uniform"  # the timestep schedule (stratified_timesteps; only the controller stage's varies)
    dropped: int = 0
    prompts_seen: int = 0

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        for module in self.frozen.values():
            module.to(device=device, dtype=dtype)

    def frozen_hashes(self) -> dict[str, str]:
        return {name: state_hash(m) for name, m in sorted(self.frozen.items())}

    def text_states(self, prompts: list[str], dtype: torch.dtype) -> torch.Tensor:
        kept = drop_prompts(prompts, self.prompt_drop_p) if self.prompt_drop_p > 0 else list(prompts)
        self.dropped += sum(1 for p, k in zip(prompts, kept) if k == "" and p != "")
        self.prompts_seen += len(prompts)
        # clone: the encoder caches states, and ones cached under inference_mode (sample grids) cannot enter autograd
        return self.frozen["text_encoder"].encode(kept).to(dtype).clone()

    def loss(self, engine, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        images = torch.from_numpy(batch["image"]).to(device)
        if self.stage == "vae":
            return engine(images.to(dtype))
        masks = torch.from_numpy(batch["mask"]) if self.stage == "controlnet" else None
        if masks is not None and self.pair_augment_p > 0:
            images, masks = augment_pairs(images, masks.to(device), self.pair_augment_p)
        with torch.no_grad():
            latents = encode_latents(self.frozen["vae"], images, self.latent_scaling).to(dtype)
        noise = torch.randn_like(latents)
        t = stratified_timesteps(latents.shape[0], self.scheduler.config.num_train_timesteps, device, self.timesteps)
        noisy = self.scheduler.add_noise(latents, noise, t)
        text = self.text_states(batch["prompt"], dtype)
        if self.stage == "unet":
            pred = engine(noisy, t, encoder_hidden_states=text).sample
        else:
            cond = self.condition.encode(masks.cpu(), batch.get("organ_map")).to(device=device, dtype=dtype)
            down, mid = engine(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            pred = self.frozen["unet"](noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                       mid_block_additional_residual=mid).sample
        mse = torch.nn.functional.mse_loss(pred.float(), noise.float())
        return mse, {"mse": mse.detach()}


def stratified_timesteps(n: int, total: int, device: torch.device, schedule: str = "uniform") -> torch.Tensor:
    """``n`` timesteps on [0, total), one per stratum in random order: the same expected loss as independent draws,
    with much less batch-to-batch noise (logged losses of short runs become comparable). ``schedule``: uniform, or
    cubic = ``(1 - u³)·total`` (T2I-Adapter's non-uniform sampling: most draws at high noise, where a sample's
    layout, what a mask decides, is made)."""
    u = (torch.arange(n) + torch.rand(1)) / n
    if schedule == "cubic":
        u = 1 - u ** 3
    t = (u * total).long().clamp_(0, total - 1)
    return t[torch.randperm(n)].to(device)


def build_task(stage: str, mcfg: ModelConfig, bundle, kl_weight: float, augment_p: float,
               prompt_drop_p: float, seed: int, pair_augment_p: float = 0.0,
               controller_timesteps: str = "uniform", warm_start: bool = False) -> StageTask:
    """The stage's models: fresh trainable part (seeded, identical on every rank), or with ``warm_start`` the
    bundle's own (fine-tuning), frozen parts from ``bundle``."""
    torch.manual_seed(seed)
    if stage == "vae":
        return StageTask(stage, VaeObjective(build_autoencoder(mcfg.vae), kl_weight, augment_p))
    if bundle is None:
        raise ValueError(f"stage {stage!r} needs the previous stage's bundle (--init)")
    frozen = {"vae": freeze(bundle.vae), "text_encoder": freeze(bundle.text_encoder)}
    condition = MaskCondition.from_manifest(bundle.manifest)
    if stage not in ("unet", "controlnet"):
        raise ValueError(f"unknown stage {stage!r}")
    if stage == "controlnet":
        if bundle.unet is None:
            raise ValueError("stage 'controlnet' needs a bundle with a trained UNet (run the unet stage first)")
        frozen["unet"] = freeze(bundle.unet)
    if warm_start:
        trainable = _warm_start(bundle, stage, condition)
    elif stage == "unet":
        trainable = build_unet(mcfg.unet)
    else:
        trainable = MaskController.from_unet(bundle.unet, {**mcfg.controlnet,
                                                           "conditioning_channels": condition.channels})
    trainable.requires_grad_(True)
    trainable.train()
    scheduler = build_scheduler("ddpm", getattr(bundle, "scheduler_config", None))
    return StageTask(stage, trainable, frozen, latent_scaling=float(bundle.manifest["latent_scaling"]),
                     prompt_drop_p=prompt_drop_p, scheduler=scheduler,
                     condition=condition, pair_augment_p=pair_augment_p if stage == "controlnet" else 0.0,
                     timesteps=controller_timesteps if stage == "controlnet" else "uniform")


def _warm_start(bundle, stage: str, condition: MaskCondition) -> nn.Module:
    part = getattr(bundle, stage)  # present: run_training checked the --init bundle on the driver
    if stage == "controlnet" and part.config.conditioning_channels != condition.channels:
        raise ValueError(f"warm_start: the --init bundle's controller takes {part.config.conditioning_channels} "
                         f"condition channels; the mask encoding {condition.encoding!r} gives {condition.channels}")
    return part


def trained_model(task: StageTask) -> nn.Module:
    """The diffusers model the stage produces (saved as the checkpoint's loadable subfolder)."""
    return task.trainable.vae if isinstance(task.trainable, VaeObjective) else task.trainable

