"""Noise schedulers: T = 1000, scaled-linear betas 0.00085–0.012, ε-prediction (the SD / MRGen settings)."""
from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,
              "unipc": UniPCMultistepScheduler}


def default_scheduler_config() -> dict[str, Any]:
    """What the bundle saves as ``scheduler/scheduler_config.json`` (a DDIM config, like SD's)."""
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
        "set_alpha_to_one": False, "steps_offset": 1,
    }


def build_scheduler(kind: str = "ddim", config: dict[str, Any] | None = None):
    """A fresh scheduler of ``kind`` (ddpm / ddim / dpm = DPM-Solver++ multistep / unipc = UniPC multistep) from a
    scheduler config.

    ``config`` is a saved scheduler config (any class); keys the chosen class does not know are ignored, so a
    DDIM config of a bundle also builds its DPM-Solver++ and DDPM schedulers.
    """
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown sampler {kind!r}: choose from {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[kind]
    base = dict(config or default_scheduler_config())
    accepted = set(cls._get_init_keys(cls)) - {"self"}
    kwargs = {k: v for k, v in base.items() if k in accepted}
    if kind == "dpm":
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2)
    if kind == "unipc":  # diffusers' recommendation for guided sampling: x0-predictor, second order, B(h) = e^h - 1
        kwargs.update(predict_x0=True, solver_order=2, solver_type="bh2")
    if kind == "ddpm":
        kwargs.setdefault("variance_type", "fixed_small")
    return cls(**kwargs)
