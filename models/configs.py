"""Model sizes: the constructor arguments of every part, for a ``tiny`` CPU model and the ``paper`` release.

A :class:`ModelConfig` holds plain dicts (diffusers constructor kwargs), so each part is built with
``Cls(**cfg.unet)`` and saved configs stay diffusers configs. ``paper`` mirrors the official MRGen release
(autoencoder 128/256/512/512, UNet 320/640/1280/1280, BiomedCLIP text tower of width 768); ``tiny`` is the
64×64 CPU size measured in ``shared/NOTES.md``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from typing import Any

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@dataclass
class ModelConfig:
    """Constructor kwargs of each part plus the image resolution they were sized for."""

    name: str
    resolution: int
    vae: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    controlnet: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.vae["block_out_channels"]) - 1)
        embed = self.controlnet["conditioning_embedding_out_channels"]
        if 2 ** (len(embed) - 1) != factor:
            raise ValueError(f"model config {self.name!r}: controlnet.conditioning_embedding_out_channels {embed} "
                             f"downsamples by {2 ** (len(embed) - 1)}, the autoencoder by {factor}")
        if self.vae["latent_channels"] != self.unet["in_channels"]:
            raise ValueError(f"model config {self.name!r}: vae.latent_channels {self.vae['latent_channels']} != "
                             f"unet.in_channels {self.unet['in_channels']}")
        width = self.text_encoder.get("width")
        if width is not None and width != self.unet["cross_attention_dim"]:
            raise ValueError(f"model config {self.name!r}: text_encoder width {width} != "
                             f"unet.cross_attention_dim {self.unet['cross_attention_dim']}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample_factor

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))


def _vae(blocks: tuple[int, ...], layers: int, groups: int, resolution: int) -> dict[str, Any]:
    return {
        "in_channels": 1, "out_channels": 1, "latent_channels": 16,
        "down_block_types": ["DownEncoderBlock2D"] * len(blocks),
        "up_block_types": ["UpDecoderBlock2D"] * len(blocks),
        "block_out_channels": list(blocks), "layers_per_block": layers, "norm_num_groups": groups,
        "sample_size": resolution, "scaling_factor": 1.0,
    }


def _unet(blocks: tuple[int, ...], cross_attn: int, layers: int, groups: int, cross_dim: int, heads: int,
          sample_size: int) -> dict[str, Any]:
    plain = len(blocks) - cross_attn
    return {
        "sample_size": sample_size, "in_channels": 16, "out_channels": 16,
        "down_block_types": ["CrossAttnDownBlock2D"] * cross_attn + ["DownBlock2D"] * plain,
        "up_block_types": ["UpBlock2D"] * plain + ["CrossAttnUpBlock2D"] * cross_attn,
        "block_out_channels": list(blocks), "layers_per_block": layers, "norm_num_groups": groups,
        "cross_attention_dim": cross_dim, "attention_head_dim": heads,
    }


def tiny() -> ModelConfig:
    # ×4 (a 16×16 latent): at ×8 the tiny autoencoder blurs the phantom's organs away, so even a perfect controller
    # could not draw them (the sweep in README "Results": following ceiling and score per CPU-minute)
    resolution = 64
    return ModelConfig(
        name="tiny", resolution=resolution,
        vae=_vae((16, 32, 64), layers=1, groups=8, resolution=resolution),
        unet=_unet((32, 64), cross_attn=1, layers=1, groups=16, cross_dim=64, heads=4, sample_size=resolution // 4),
        controlnet={"conditioning_channels": 1, "conditioning_embedding_out_channels": [16, 32, 64]},
        text_encoder={
            "width": 64, "seed": 0,
            "model_cfg": {
                "embed_dim": 64, "custom_text": True,
                "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
            },
        },
    )


def paper() -> ModelConfig:
    resolution = 512
    return ModelConfig(
        name="paper", resolution=resolution,
        vae=_vae((128, 256, 512, 512), layers=2, groups=32, resolution=resolution),
        unet=_unet((320, 640, 1280, 1280), cross_attn=3, layers=2, groups=32, cross_dim=768, heads=8,
                   sample_size=resolution // 8),
        controlnet={"conditioning_channels": 1, "conditioning_embedding_out_channels": [16, 32, 96, 256]},
        # MRGEN_TEXT_ENCODER: a local open_clip folder holding BiomedCLIP, where the hub is out of reach
        text_encoder={"width": 768, "pretrained": os.environ.get("MRGEN_TEXT_ENCODER", BIOMEDCLIP)},
    )


MODEL_CONFIGS = {"tiny": tiny, "paper": paper}


PARTS = ("vae", "unet", "controlnet", "text_encoder")


def model_config(name: str = "tiny", overrides: dict[str, dict[str, Any]] | None = None) -> ModelConfig:
    """``model_config("tiny")`` or ``model_config("paper")``: a fresh copy, safe to modify.

    ``overrides``: part → constructor kwargs replacing the preset's (``{"vae": {"latent_channels": 8},
    "unet": {"in_channels": 8, "out_channels": 8}}``); the result is checked like a preset.
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}: choose from {sorted(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[name]()
    if not overrides:
        return cfg
    values = cfg.to_dict()
    for part, kwargs in overrides.items():
        if part not in PARTS or not isinstance(kwargs, dict):
            raise ValueError(f"model overrides: {part!r} is not a part; use a mapping under one of {PARTS}")
        values[part].update(copy.deepcopy(kwargs))
    return ModelConfig(**values)
