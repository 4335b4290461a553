"""Sampling: text (+ mask) → images, the direct diffusers loop with classifier-free guidance.

Every output image has its own seed: its initial noise (and any sampler noise) comes from its own
``torch.Generator``, so results do not depend on batch size, batch composition or order. The noise is drawn as
diffusers pipelines draw it (``randn_tensor`` with one CPU generator per image: a ``(1, C, H/f, W/f)`` draw each,
times the scheduler's ``init_noise_sigma``), so image ``i`` with seed ``s`` is the image a diffusers-style pipeline
(the official release's included) gives for ``generator=torch.Generator().manual_seed(s)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from mrgen.models.autoencoder import decode_latents
from mrgen.models.bundle import ModelBundle
from mrgen.models.condition import MaskCondition
from mrgen.models.sampling import PAPER_SAMPLING, SAMPLERS
from mrgen.models.scheduler import build_scheduler


class MRGenPipeline:
    """Built once from a :class:`ModelBundle` (like ``nnUNetPredictor``), then called many times."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device | None = None):
        missing = [name for name in ("vae", "unet", "text_encoder") if getattr(bundle, name) is None]
        if missing:
            raise ValueError(f"MRGenPipeline needs a bundle with vae, unet and text_encoder; missing {missing}")
        self.bundle = bundle
        if device is not None:
            bundle.to(device)
        self.device = bundle.unet.device
        self.dtype = bundle.unet.dtype
        self.latent_channels = int(bundle.unet.config.in_channels)
        self.factor = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
        self.condition = MaskCondition.from_manifest(bundle.manifest)
        cross, width = bundle.unet.config.cross_attention_dim, bundle.text_encoder.width
        if cross != width:
            raise ValueError(f"the unet's config.json cross_attention_dim is {cross} but the text encoder's token "
                             f"width is {width}: the parts come from models of different sizes")

    @property
    def resolution(self) -> int:
        return self.bundle.resolution

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], masks: np.ndarray | torch.Tensor | None, num_candidates: int = 1,
                 steps: int = PAPER_SAMPLING.steps, guidance: float = PAPER_SAMPLING.guidance,
                 sampler: str = PAPER_SAMPLING.sampler, seeds: Sequence[int] | None = None,
                 batch_size: int | None = None, organ_maps=None,
                 conditioning_scale: float = PAPER_SAMPLING.conditioning_scale) -> np.ndarray:
        """Images ``[len(prompts) * num_candidates, H, W]`` float32 in [0, 1], mask-major order.

        ``masks``: uint8 organ ids ``[B, H, W]`` (one per prompt) or ``None`` for text-only generation;
        ``organ_maps``: id → organ name, one per mask or one for all (needed by bundles that condition on organ
        names: ``MaskCondition``; an organ outside their vocabulary raises ``UnknownOrganError``).
        ``seeds``: one per output image (default ``0, 1, ...``). ``batch_size``: images per sampling batch
        (default all); it changes speed and memory, not the images (equal up to float rounding, bitwise for
        equal batching). ``conditioning_scale``: weight of the mask controller's residuals.
        """
        prompts = list(prompts)
        n = len(prompts) * int(num_candidates)
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        _check_request(len(prompts), num_candidates, seeds, sampler, steps)
        condition, size = self._condition(masks, len(prompts), organ_maps)
        rows = [i // num_candidates for i in range(n)]
        step = batch_size or n
        out = []
        for start in range(0, n, step):
            idx = rows[start:start + step]
            cond = condition[idx] if condition is not None else None
            out.append(self._sample([prompts[i] for i in idx], cond, seeds[start:start + step], size, steps,
                                    guidance, sampler, conditioning_scale))
        return np.concatenate(out).astype(np.float32)

    def _condition(self, masks, num_prompts: int, organ_maps=None) -> tuple[torch.Tensor | None, int]:
        """The controller's input ``[B, C, H, W]`` (None for text-only) and the image side to generate."""
        if masks is None:
            return None, self.resolution
        if self.bundle.controlnet is None:
            raise ValueError("masks given but the model bundle has no controlnet part")
        condition = self.condition.encode(masks, organ_maps)
        channels = int(self.bundle.controlnet.config.conditioning_channels)
        if channels != condition.shape[1]:
            if condition.shape[1] != 1:
                raise ValueError(f"the bundle's controller takes {channels} condition channels, its mask encoding "
                                 f"({self.condition.encoding}) gives {condition.shape[1]}")
            condition = condition.expand(-1, channels, -1, -1)  # a controller trained on RGB renderings of the mask
        if condition.shape[0] != num_prompts:
            raise ValueError(f"masks: {condition.shape[0]} masks for {num_prompts} prompts")
        size = condition.shape[-1]
        if condition.shape[-2] != size or size % self.factor:
            raise ValueError(f"masks must be square with a side divisible by {self.factor}, got "
                             f"{tuple(condition.shape[-2:])}")
        return condition, size

    def generate_text_only(self, prompts: Sequence[str], num_candidates: int = 1, **kwargs) -> np.ndarray:
        return self.generate(prompts, None, num_candidates, **kwargs)

    def _sample(self, prompts: list[str], condition: torch.Tensor | None, seeds: list[int], size: int, steps: int,
                guidance: float, sampler: str, conditioning_scale: float) -> np.ndarray:
        bundle = self.bundle
        scheduler = build_scheduler(sampler, bundle.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(seeds), self.latent_channels, size // self.factor, size // self.factor)
        latents = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        # latents and scheduler arithmetic stay float32; only the networks run in the bundle's dtype
        latents = (latents * scheduler.init_noise_sigma).to(self.device)
        use_cfg = guidance != 1.0
        text = bundle.text_encoder.encode(([""] * len(prompts) if use_cfg else []) + prompts)
        text = text.to(self.device, self.dtype)
        if condition is not None:
            condition = condition.to(self.device, self.dtype)
            condition = torch.cat([condition, condition]) if use_cfg else condition
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t).to(self.dtype)
            residuals = {}
            if condition is not None:
                down, mid = bundle.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=condition,
                                              conditioning_scale=conditioning_scale, return_dict=False)
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            noise = bundle.unet(model_in, t, encoder_hidden_states=text, return_dict=False, **residuals)[0]
            noise = noise.float()
            if use_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents, generator=generators, return_dict=False)[0]
        images = decode_latents(bundle.vae, latents, bundle.latent_scaling)
        return images[:, 0].float().cpu().numpy()


def _check_request(num_prompts: int, num_candidates: int, seeds: list[int], sampler: str, steps: int) -> None:
    n = num_prompts * num_candidates
    if num_candidates < 1 or num_prompts < 1:
        raise ValueError(f"need at least one prompt and num_candidates >= 1, "
                         f"got {num_prompts} prompts and num_candidates={num_candidates}")
    if len(seeds) != n:
        raise ValueError(f"seeds: need one per output image ({num_prompts} prompts × {num_candidates} = {n}), "
                         f"got {len(seeds)}")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise ValueError(f"seeds must lie in [0, 2**63), got {bad[:3]}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose from {SAMPLERS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
