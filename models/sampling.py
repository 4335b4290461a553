"""Sampling settings: the sampler, its steps and the guidance weight, one default per preset.

Light on purpose (no torch, no diffusers), so configs and the CLI can import it; :class:`MRGenPipeline`
(``models/pipeline.py``) samples with them, as ``models/scorers.py`` configures the scorers of ``sam2_scorer.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SAMPLERS = ("ddim", "dpm", "ddpm")


@dataclass(frozen=True)
class SamplingSettings:
    """How :meth:`MRGenPipeline.generate` samples; the defaults are the paper's (and the release's) DDIM 50, guidance 7.

    Image seeds are not part of it: each caller derives one per image from its own run seed.
    """

    sampler: str = field(default="ddim", metadata={
        "description": "ddim (the paper's), dpm (DPM-Solver++, as good in about 20 steps) or ddpm",
        "choices": SAMPLERS})
    steps: int = field(default=50, metadata={"description": "sampling steps"})
    guidance: float = field(default=7.0, metadata={"description": "classifier-free guidance weight (1.0: no "
                                                                  "unconditional pass)"})
    conditioning_scale: float = field(default=1.0, metadata={
        "description": "weight of the mask controller's residuals (diffusers' controlnet_conditioning_scale): "
                       "above 1 the organs follow the mask's shape more strictly, at some cost in realism"})

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose from {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.conditioning_scale < 0:
            raise ValueError(f"conditioning_scale must be >= 0, got {self.conditioning_scale}")

    @classmethod
    def from_fields(cls, config: Any, prefix: str = "") -> SamplingSettings:
        """The settings a job config holds as fields of its own (``steps``, ... or, with ``prefix="default_"``,
        ``default_steps``, ...)."""
        return cls(**{f.name: getattr(config, prefix + f.name) for f in fields(cls)})

    def kwargs(self) -> dict:
        """The settings as keyword arguments of :meth:`MRGenPipeline.generate`."""
        return asdict(self)


# one sampling default per preset; a job's config starts from its preset's (the paper's: its fields' defaults).
# "tiny": random test bundles, few steps; "default": the embedded trained tiny generator (`mrgen demo`, `mrgen eval
# mask`): DPM-Solver++ 20 at guidance 4, where its Inception FID to real T2-SPIR is lowest (a sweep over guidance 1-7,
# docs/results.md)
SAMPLING_PRESETS = {"tiny": SamplingSettings(steps=4),
                    "default": SamplingSettings(sampler="dpm", steps=20, guidance=4.0),
                    "paper": SamplingSettings()}
PAPER_SAMPLING = SAMPLING_PRESETS["paper"]
