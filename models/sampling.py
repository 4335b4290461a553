"""Sampling settings: the sampler, its steps and the guidance weight, one default per preset.

Light on purpose (no torch, no diffusers), so configs and the CLI can import it; :class:`MRGenPipeline`
(``models/pipeline.py``) samples with them, as ``models/scorers.py`` configures the scorers of ``sam2_scorer.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose from {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")

    def kwargs(self) -> dict:
        """``steps``, ``guidance`` and ``sampler`` as :meth:`MRGenPipeline.generate` takes them."""
        return asdict(self)


# one sampling default per preset; a job's config starts from its preset's (the paper's: its fields' defaults).
# "tiny": random test bundles, few steps; "default": the demo's trained tiny generator (`mrgen demo`, `mrgen eval
# mask`), whose samples lose the body outline at the paper's guidance 7 (docs/results.md), so DPM-Solver++ 20 at 2
SAMPLING_PRESETS = {"tiny": SamplingSettings(steps=4),
                    "default": SamplingSettings(sampler="dpm", steps=20, guidance=2.0),
                    "paper": SamplingSettings()}
PAPER_SAMPLING = SAMPLING_PRESETS["paper"]
