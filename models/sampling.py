"""Sampling settings: the sampler, its steps, the guidance weight and the steps it applies to, one default per preset.

Light on purpose (no torch, no diffusers), so configs and the CLI can import it; :class:`MRGenPipeline`
(``models/pipeline.py``) samples with them, as ``models/scorers.py`` configures the scorers of ``sam2_scorer.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SAMPLERS = ("ddim", "dpm", "unipc", "ddpm")
FULL_INTERVAL = (0.0, 1.0)  # classifier-free guidance at every step


@dataclass(frozen=True)
class SamplingSettings:
    """How :meth:`MRGenPipeline.generate` samples; the defaults are the paper's (and the release's) DDIM 50, guidance 7.

    Image seeds are not part of it: each caller derives one per image from its own run seed.
    """

    sampler: str = field(default="ddim", metadata={
        "description": "ddim (the paper's), dpm (DPM-Solver++, as good in about 20 steps), unipc (UniPC, a "
                       "predictor-corrector multistep solver for few steps) or ddpm",
        "choices": SAMPLERS})
    steps: int = field(default=50, metadata={"description": "sampling steps"})
    guidance: float = field(default=7.0, metadata={"description": "classifier-free guidance weight (1.0: no "
                                                                  "unconditional pass)"})
    guidance_interval: tuple[float, float] = field(default=FULL_INTERVAL, metadata={
        "description": "[lo, hi): classifier-free guidance only at steps i (of n, from 0) with lo <= i/n < hi; the "
                       "other steps run the conditional pass alone, one denoiser row per image instead of two"})
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
        object.__setattr__(self, "guidance_interval", check_guidance_interval(self.guidance_interval))

    def guided(self, step: int) -> bool:
        """Whether step ``step`` (0-based, of ``steps``) runs the unconditional pass too."""
        return self.guidance != 1.0 and guided_step(step, self.steps, self.guidance_interval)

    def denoiser_rows(self) -> int:
        """Denoiser rows (batch rows through controller and UNet) one image costs: 2 at a guided step, 1 otherwise."""
        return sum(2 if self.guided(i) else 1 for i in range(self.steps))

    @classmethod
    def from_fields(cls, config: Any, prefix: str = "") -> SamplingSettings:
        """The settings a job config holds as fields of its own (``steps``, ... or, with ``prefix="default_"``,
        ``default_steps``, ...); a setting the config does not hold keeps its default (the service, which takes
        no ``default_guidance_interval``, guides every step)."""
        return cls(**{f.name: getattr(config, prefix + f.name) for f in fields(cls)
                      if hasattr(config, prefix + f.name)})

    def kwargs(self) -> dict:
        """The settings as keyword arguments of :meth:`MRGenPipeline.generate`."""
        return asdict(self)


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """``interval`` as a ``(lo, hi)`` tuple of floats with 0 <= lo < hi <= 1; else a ValueError naming it."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers [lo, hi), got {interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    return lo, hi


def guided_step(step: int, steps: int, interval: tuple[float, float]) -> bool:
    """Whether step ``step`` of ``steps`` lies in the guidance interval: lo <= step / steps < hi."""
    lo, hi = interval
    return lo <= step / steps < hi


def early_stop_step(at: float, steps: int) -> int:
    """The step index ``k = round(at * steps)`` where early rejection looks at x̂₀; a ValueError unless
    1 <= k < steps (step 0's x̂₀ is mostly noise, the last step's is the image itself)."""
    if not 0.0 < at < 1.0:
        raise ValueError(f"early rejection's step must be a fraction of the steps in (0, 1), got {at}")
    if steps < 2:
        raise ValueError(f"early rejection needs at least 2 steps (a step between the first and the last), got {steps}")
    k = round(at * steps)
    if not 1 <= k < steps:
        raise ValueError(f"early rejection at {at} of {steps} steps is step {k}: it must be a step from 1 to "
                         f"{steps - 1}")
    return k


# one sampling default per preset; a job's config starts from its preset's (the paper's: its fields' defaults).
# "tiny": random test bundles, few steps; "default": the embedded trained tiny generator (`mrgen demo`, `mrgen eval
# mask`): DPM-Solver++ 20 at guidance 4, where its Inception FID to real T2-SPIR is lowest (a sweep over guidance 1-7,
# docs/results.md)
# "cheap": R2 of `mrgen bench cost` (`mrgen synthesize --config cheap`): DPM-Solver++ 4 with guidance on the first
# half of the steps, 6 denoiser rows a candidate where "default" takes 40 and the paper's 100; at equal count its
# slices train segmenters as well as the release's recipe's (−0.1 [−2.8, +2.7] Dice) but worse than "default"'s
# (−3.3 [−5.2, −1.5]): docs/results.md 2026-12-07 (later)
SAMPLING_PRESETS = {"tiny": SamplingSettings(steps=4),
                    "default": SamplingSettings(sampler="dpm", steps=20, guidance=4.0),
                    "cheap": SamplingSettings(sampler="dpm", steps=4, guidance=4.0, guidance_interval=(0.0, 0.5)),
                    "paper": SamplingSettings()}
PAPER_SAMPLING = SAMPLING_PRESETS["paper"]
