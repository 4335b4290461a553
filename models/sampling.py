"""Sampling settings: the sampler, its steps, the guidance weight and the steps it applies to, one default per preset.

Light on purpose (no torch, no diffusers), so configs and the CLI can import it; :class:`MRGenPipeline`
(``models/pipeline.py``) samples with them. Every job and service that samples holds one ``sampling:`` section of
:class:`SamplingSettings` (their flags are generated from it); a request that may leave each setting to the service
holds :class:`SamplingOverrides`, the same fields, bounds and descriptions, each optional.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic.dataclasses import dataclass

Sampler = Literal["ddim", "dpm", "unipc", "ddpm"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
FULL_INTERVAL = (0.0, 1.0)  # classifier-free guidance at every step


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """``interval`` as a ``(lo, hi)`` tuple of floats with 0 <= lo < hi <= 1; else a ValueError naming it."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers [lo, hi), got {interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    return lo, hi


GuidanceInterval = Annotated[tuple[float, float], BeforeValidator(check_guidance_interval)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SamplingSettings:
    """How :meth:`MRGenPipeline.generate` samples; the defaults are the paper's (and the release's) DDIM 50, guidance 7.
    Each field is checked here and nowhere else.

    Image seeds are not part of it: each caller derives one per image from its own run seed.
    """

    sampler: Sampler = Field("ddim", description="ddim (the paper's), dpm (DPM-Solver++, as good in about 20 steps), "
                                                 "unipc (UniPC, a predictor-corrector multistep solver for few "
                                                 "steps) or ddpm")
    steps: int = Field(50, ge=1, description="sampling steps")
    guidance: float = Field(7.0, ge=0, description="classifier-free guidance weight (1.0: no unconditional pass)")
    guidance_interval: GuidanceInterval = Field(
        FULL_INTERVAL, description="[lo, hi): classifier-free guidance only at steps i (of n, from 0) with lo <= i/n "
                                   "< hi; the other steps run the conditional pass alone, one denoiser row per image "
                                   "instead of two. [0, 1]: every step")
    conditioning_scale: float = Field(1.0, ge=0, description="weight of the mask controller's residuals (diffusers' "
                                                             "controlnet_conditioning_scale): above 1 the organs "
                                                             "follow the mask's shape more strictly, at some cost in "
                                                             "realism")

    def guided(self, step: int) -> bool:
        """Whether step ``step`` (0-based, of ``steps``) runs the unconditional pass too."""
        return self.guidance != 1.0 and guided_step(step, self.steps, self.guidance_interval)

    def denoiser_rows(self) -> int:
        """Denoiser rows (batch rows through controller and UNet) one image costs: 2 at a guided step, 1 otherwise."""
        return sum(2 if self.guided(i) else 1 for i in range(self.steps))

    def kwargs(self) -> dict:
        """The settings as a mapping (a config's ``sampling`` section, or ``SamplingSettings(**kwargs)``)."""
        return dataclasses.asdict(self)


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def over(self, defaults: SamplingSettings) -> SamplingSettings:
        """``defaults`` with the settings given here (not None) in their place."""
        given = {name: value for name, value in self if name in SamplingSettings.__pydantic_fields__
                 and value is not None}
        return dataclasses.replace(defaults, **given)


def _optional(field) -> tuple[Any, Any]:
    """A field of :class:`SamplingSettings` as an optional one: its type and bounds, or None."""
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return annotation | None, Field(None, description=field.description)


# What a request may set, each None to leave it to a default (the service's): SamplingSettings' fields, with their
# bounds and descriptions. `mrgen generate`'s config and the endpoint's request schema take their sampling fields
# from it.
SamplingOverrides = create_model("SamplingOverrides", __base__=_Overrides,
                                 **{name: _optional(f) for name, f in SamplingSettings.__pydantic_fields__.items()})


def guided_step(step: int, steps: int, interval: tuple[float, float]) -> bool:
    """Whether step ``step`` of ``steps`` lies in the guidance interval: lo <= step / steps < hi."""
    lo, hi = interval
    return lo <= step / steps < hi


EARLY_REJECT_AT_HELP = ("at this fraction of the steps, score each candidate's predicted clean image x̂₀ with the "
                        "filter and stop those below early_reject_below (None: off)")
EARLY_REJECT_BELOW_HELP = ("a candidate whose x̂₀ mean IoU (over organs, as the rule counts them) is below this stops "
                           "at early_reject_at (0.0: x̂₀ is scored, nothing stops)")


def check_early_reject_cut(at: float | None, below: float) -> None:
    """ValueError when a cut is given without the fraction of the steps it is applied at."""
    if below and at is None:
        raise ValueError(f"early_reject_below ({below}) needs early_reject_at (the fraction of the steps where x̂₀ is "
                         "scored)")


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
