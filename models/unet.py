"""Stage 2: the text-guided diffusion UNet (diffusers ``UNet2DConditionModel``, ε-prediction on 16-ch latents)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel

PROMPT_DROP = 0.1  # paper §4.1: 10 % empty prompts so classifier-free guidance works


def build_unet(cfg: dict[str, Any]) -> UNet2DConditionModel:
    """A randomly initialised UNet from ``ModelConfig.unet``."""
    return UNet2DConditionModel(**cfg)


def drop_prompts(prompts: Sequence[str], p: float = PROMPT_DROP, generator: torch.Generator | None = None) -> list[str]:
    """Each prompt independently replaced by ``""`` (the unconditional prompt) with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"prompt drop probability must be in [0, 1], got {p}")
    drop = torch.rand(len(prompts), generator=generator) < p
    return ["" if d else prompt for prompt, d in zip(prompts, drop.tolist())]
