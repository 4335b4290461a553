"""Downstream segmentation configuration: nnU-Net v2 (2d) budgets and where it runs (section ``segment``).

nnU-Net plans everything else itself (patch size, stages, normalisation, augmentation); these fields only
shrink its budget so that it fits a small machine, and pick the Ray resources of the task it runs in.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mrgen.platform.config import ConfigBase, ConfigError, preset

# nnU-Net's channel names select its intensity normalisation (map_channel_name_to_normalization.py).
NORMALIZATION_CHANNELS = {"zscore": "MRI", "rgb_to_0_1": "rgb_to_0_1"}
BUDGET_KEYS = {"epochs": "epochs", "iterations": "iterations", "val_iterations": "val_iterations", "width": "width",
               "batch": "batch_size", "batch_size": "batch_size", "minutes": "max_minutes"}
FLOAT_BUDGET_KEYS = {"max_minutes"}


class SegmentConfig(ConfigBase):
    """nnU-Net v2 2-D training and prediction inside Ray tasks."""

    section = "segment"

    trainer: str = Field("nnUNetTrainer", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                         description="nnU-Net trainer class, as nnU-Net's `-tr` names it: nnUNetTrainer or one of its "
                                     "built-in variants (nnUNetTrainerAdam3en4, nnUNetTrainerNoDA, ...)")
    epochs: int = Field(1000, ge=1, description="training epochs (nnU-Net's num_epochs)")
    iterations: int = Field(250, ge=1, description="training iterations per epoch (num_iterations_per_epoch)")
    val_iterations: int = Field(50, ge=1, description="validation iterations per epoch (pseudo-Dice only)")
    max_minutes: float | None = Field(None, gt=0, description="wall-time budget of the training task (export, "
                                                              "planning, training): after each epoch the next "
                                                              "epochs get the iterations that still fit (never above "
                                                              "`iterations`, at least 1); the epochs stay, so the "
                                                              "learning rate still decays to its end")
    width: int | None = Field(None, ge=4, description="features of the first stage, doubling per stage up to "
                                                       "max_width; None keeps nnU-Net's planned widths (32 … 512)")
    max_width: int | None = Field(None, ge=4, description="cap of the per-stage features (default 8 x width)")
    batch_size: int | None = Field(None, ge=1, description="batch size; None keeps nnU-Net's planned one")
    fold: Literal["all", 0, 1, 2, 3, 4] = Field("all", description="'all' trains on every case; 0-4 a 5-fold split")
    normalization: Literal["zscore", "rgb_to_0_1"] = Field(
        "zscore", description="zscore: nnU-Net's MRI default, per training case (a 2-D slice here), so prediction "
                              "runs slice by slice; rgb_to_0_1: x/255 of the exported 8-bit slice, which keeps the "
                              "DB's per-volume [0,1] scaling, so whole volumes are predicted at once")
    mirroring: bool = Field(True, description="test-time mirroring at prediction (4 passes per slice in 2-D)")
    keep_orientation: bool = Field(False, description="train without mirroring and with rotations of at most ±15°: "
                                                      "nnU-Net's 2-D default for a square patch (mirroring both "
                                                      "axes, rotations up to ±180°) lets a right organ pass for a "
                                                      "left one; such a model predicts without mirroring")
    learning_rate: float | None = Field(None, gt=0, description="initial learning rate (nnU-Net's initial_lr); None "
                                                                "keeps the trainer's own")
    seed: int = Field(0, description="seeds torch / numpy / random in the training task")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when num_gpus > 0")
    num_gpus: float = Field(0, ge=0, description="GPUs of the Ray task")
    num_cpus: float = Field(1, gt=0, description="CPUs of the Ray task")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads in the task")
    processes: int = Field(1, ge=1, description="nnU-Net worker processes for fingerprint / preprocessing")
    augmentation_processes: int = Field(0, ge=0, description="nnU-Net data-augmentation processes (0 = in the "
                                                             "training process, no worker start-up)")
    keep_best_checkpoint: bool = Field(False, description="also save checkpoint_best.pth with the model")
    progress_plot: bool = Field(True, description="write nnU-Net's progress.png (once, at the end)")

    @field_validator("fold", mode="before")
    @classmethod
    def _fold(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.isdigit() else value

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        if self.max_width is not None and self.width is not None and self.max_width < self.width:
            raise ValueError(f"max_width ({self.max_width}) must be >= width ({self.width})")
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device 'cuda' needs num_gpus > 0 (the Ray task must own a GPU)")
        return self

    def features_per_stage(self, n_stages: int, planned: list[int]) -> list[int]:
        """Per-stage widths: planned ones when width is None, else width doubling up to max_width."""
        if self.width is None:
            return list(planned)
        cap = self.max_width or 8 * self.width
        return [min(self.width * 2 ** i, cap) for i in range(n_stages)]

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if self.num_gpus > 0 else "cpu"
        return self.device

    def channel_name(self) -> str:
        return NORMALIZATION_CHANNELS[self.normalization]


def parse_budget(text: str | None) -> dict[str, Any]:
    """``"epochs=2,iterations=10,width=16,minutes=5"`` → config overrides; unknown keys raise ConfigError naming
    them."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in BUDGET_KEYS:
            raise ConfigError(f"--budget item {item!r}: use key=value with key in {sorted(BUDGET_KEYS)}")
        field = BUDGET_KEYS[key]
        kind = float if field in FLOAT_BUDGET_KEYS else int
        try:
            out[field] = kind(value)
        except ValueError:
            expected = "a number" if kind is float else "an integer"
            raise ConfigError(f"--budget {key}={value!r}: expected {expected}") from None
    return out


# The small presets train with AdamW (nnU-Net's nnUNetTrainerAdam): on the phantom's T1 slices, in ~700 iterations
# at 1e-3 it learns liver, spleen, left kidney and bladder where nnU-Net's default SGD (1e-2, momentum 0.99) learns
# only the liver in 2,000 (docs/results.md, 2026-12-04). They keep the orientation (no mirroring, rotations within
# ±15°), in small batches: one source-only segmenter on the default phantom's T1 training slices, 1 core for 4.5 min,
# learns the kidneys to 52/53 % Dice at nnU-Net's ±180° and mirroring (batch 12), to 74/75 % keeping the orientation
# with batch 4 (docs/results.md, 2026-12-05 afternoon), and to 81/87 % (prostate 72 %, pooled over 96 slices) at
# 2e-3 (3e-3, 5e-3, wider nets and organ-balanced slice draws did no better: docs/results.md, 2026-12-05 evening).
SMALL_BUDGET = {"trainer": "nnUNetTrainerAdam", "learning_rate": 2e-3, "mirroring": False, "keep_orientation": True}


@preset(SegmentConfig, "tiny")
def _tiny() -> dict[str, Any]:
    """Tests: seconds of training at 64x64 on one CPU."""
    return {**SMALL_BUDGET, "epochs": 2, "iterations": 6, "val_iterations": 1, "width": 8, "max_width": 32,
            "batch_size": 8, "progress_plot": False}


@preset(SegmentConfig, "quick")
def _quick() -> dict[str, Any]:
    """`mrgen demo --quick`: about a minute of training per segmenter on one CPU."""
    return {**SMALL_BUDGET, "epochs": 4, "iterations": 15, "val_iterations": 2, "width": 16, "max_width": 64,
            "batch_size": 12}


@preset(SegmentConfig, "default")
def _default() -> dict[str, Any]:
    """`mrgen demo`: a few minutes per segmenter on one CPU."""
    return {**SMALL_BUDGET, "epochs": 12, "iterations": 300, "val_iterations": 3, "width": 16, "max_width": 128,
            "batch_size": 4}


@preset(SegmentConfig, "paper")
def _paper() -> dict[str, Any]:
    """nnU-Net's own defaults (1000 epochs x 250 iterations, planned widths and batch) on one GPU."""
    return {"num_gpus": 1, "num_cpus": 4, "torch_threads": 4, "processes": 4, "augmentation_processes": 4,
            "keep_best_checkpoint": True}
