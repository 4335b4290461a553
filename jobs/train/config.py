"""Training configuration: one ``train`` section with settings per stage (paper §3.4 and §4.1).

Stages: ``vae`` (autoencoder reconstruction), ``unet`` (text-guided pretraining), ``controlnet``
(mask-conditioned finetuning). ``--set unet.lr=1e-4`` changes one stage; the rest is shared.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mrgen.datasets.schema import INDEX_COLUMNS
from mrgen.models.configs import model_config
from mrgen.platform.config import ConfigBase, preset

STAGES = ("vae", "unet", "controlnet")
Stage = Literal["vae", "unet", "controlnet"]


class StageSettings(BaseModel):
    """What differs between the three stages."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(gt=0, description="peak learning rate (AdamW)")
    batch_size: int = Field(8, ge=1, description="micro-batch per worker")
    max_steps: int = Field(60, ge=1, description="optimizer steps of the run")
    max_minutes: float | None = Field(None, gt=0, description="wall-time budget of the stage's training loop (from "
                                                              "its start; model and data start-up not counted): at "
                                                              "each log interval the run plans the steps that still "
                                                              "fit (never above max_steps) and the learning-rate "
                                                              "schedule ends at the planned step. None: max_steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up before the cosine decay")
    filters: dict[str, Any] = Field(default_factory=lambda: {"split": "train"},
                                    description="MRGen-DB filters (dataset / modality / region / split) for this stage")

    def selection(self) -> dict[str, Any]:
        """The filters that select something (a None filter selects everything), as the DB readers take them."""
        return {k: v for k, v in self.filters.items() if v is not None}


class TrainConfig(ConfigBase):
    """Ray Train + DeepSpeed training of the three MRGen stages."""

    section = "train"

    model: Literal["tiny", "paper"] = Field("tiny", description="model sizes (mrgen.models.configs.model_config)")
    resolution: int = Field(64, ge=8, description="slice size the DB was built at; must match the model config")
    architecture: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="constructor kwargs replacing the model config's, per part, e.g. "
                                          "{'vae': {'latent_channels': 8}, 'unet': {'in_channels': 8, "
                                          "'out_channels': 8}} (sweeps; the bundle's part configs record them)")
    vae: StageSettings = Field(default_factory=lambda: StageSettings(lr=1e-3))
    unet: StageSettings = Field(default_factory=lambda: StageSettings(lr=1e-3))
    controlnet: StageSettings = Field(default_factory=lambda: StageSettings(lr=1e-3))

    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (DeepSpeed "
                                                 "gradient_accumulation_steps)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of the peak lr")
    grad_clip: float = Field(1.0, ge=0, description="gradient norm clip (0 = off)")
    zero_stage: int = Field(2, ge=0, le=2, description="DeepSpeed ZeRO stage (0-2; stage 3 would shard the weights "
                                                        "the sampling grid needs whole)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU")

    checkpoint_every: int = Field(20, ge=1, description="save a checkpoint every K optimizer steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=2,
                                  description="latest k checkpoints kept (never 1: the newest may be in flight)")
    sample_every: int = Field(0, ge=0, description="write a PNG sample grid every V steps (0 = only at the end)")
    sample_count: int = Field(4, ge=1, le=16, description="images per sample grid")
    sample_steps: int = Field(10, ge=1, description="DDIM steps for sample grids")
    log_every: int = Field(5, ge=1, description="report metrics every N steps")

    num_workers: int = Field(1, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0 = CPU training)")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs reserved per worker; leave some for Ray Data reads")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per CPU worker")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the latest checkpoint before giving up")

    prompt_drop_p: float = Field(0.1, ge=0, le=1,
                                 description="share of prompts replaced by '' (classifier-free guidance)")
    augment_p: float = Field(0.2, ge=0, le=1, description="autoencoder augmentation probability (flips, rotations)")
    pair_augment_p: float = Field(0.0, ge=0, le=1, description="controller stage: probability of one random affine "
                                                               "map applied to a slice and its mask together "
                                                               "(models.mask_controller.augment_pairs)")
    controller_timesteps: Literal["uniform", "cubic"] = Field(
        "uniform", description="controller stage: timestep sampling. cubic = (1 - u^3) T, most draws at high noise "
                               "where a mask decides the layout (T2I-Adapter's schedule)")
    mask_condition: Literal["intensity", "onehot"] = Field(
        "intensity", description="controller stage: how a mask's organs enter the controller. intensity = one channel, "
                                 "organ k of the vocabulary at k/(k+1) (the release's kind: one value per organ); "
                                 "onehot = one channel per organ of the vocabulary")
    warm_start: bool = Field(False, description="unet / controlnet stage: start the trained part from the --init "
                                                "bundle's own one (fine-tuning, as diffusers' train_controlnet.py "
                                                "--controlnet_model_name_or_path) instead of fresh (controller: a copy "
                                                "of the UNet's encoder)")
    kl_weight: float = Field(1e-4, ge=0, description="γ of the autoencoder loss")
    unmasked_fraction: float = Field(0.3, ge=0, lt=1, description="controller stage: share of slices without a mask "
                                                                   "(trained with an empty condition; the paper's "
                                                                   "guard against overfitting the masks). Where only "
                                                                   "the target modality lacks masks, as in the "
                                                                   "phantom, they are all target slices; fine-tuning "
                                                                   "the embedded controller with 0 raised its held-out "
                                                                   "target-modality following (docs/results.md)")
    data_repeat: int = Field(1, ge=1, description="passes over the stage's selection per data epoch (small DBs: "
                                                   "fewer epoch restarts, less waiting for data)")
    cache_data: bool = Field(False, description="read the stage's data (all data_repeat passes) into the object store "
                                               "once; later data epochs re-read nothing. Small DBs: each restart of "
                                               "the "
                                               "read stalled the tiny controller stage ~20 s every ~135 steps (a fifth "
                                               "of its time). Large DBs stream (False)")
    shuffle: Literal["blocks", "global"] = Field(
        "blocks", description="order of each data pass: blocks = randomize_block_order (cheap; rows then mix in the "
                              "local buffer), global = Ray Data random_shuffle (an all-to-all exchange per pass; needs "
                              "spare CPUs beside the trainers). Without either the stream runs shard by shard: one "
                              "modality, or all masked rows then all unmasked ones, for long stretches")
    shuffle_buffer: int = Field(64, ge=0, description="rows in each worker's local shuffle buffer (0 = off)")
    scaling_samples: int = Field(64, ge=1, description="slices used to measure the latent scaling factor")
    seed: int = Field(0, description="base seed; each rank adds its rank")
    fail_at_step: int | None = Field(None, ge=1, description="TESTS ONLY: rank 0 raises at this step of a run that "
                                                             "did not start from a checkpoint")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.precision in ("bf16", "fp16") and self.gpus_per_worker == 0:
            raise ValueError(f"precision {self.precision!r} needs GPUs (gpus_per_worker > 0); use fp32 or auto on CPU")
        for name in STAGES:
            s: StageSettings = getattr(self, name)
            if s.warmup_steps >= s.max_steps:
                raise ValueError(f"{name}.warmup_steps ({s.warmup_steps}) must be below {name}.max_steps "
                                 f"({s.max_steps})")
            bad = set(s.filters) - (set(INDEX_COLUMNS) - {"has_mask"})
            if bad:
                raise ValueError(f"{name}.filters: cannot filter on {sorted(bad)}; use "
                                 f"{sorted(set(INDEX_COLUMNS) - {'has_mask'})}")
        try:
            res = self.build_model_config().resolution
        except (TypeError, ValueError) as exc:
            raise ValueError(f"architecture: {exc}") from None
        if res != self.resolution:
            raise ValueError(f"resolution {self.resolution} does not match model {self.model!r} (built for {res})")
        return self

    def build_model_config(self):
        """The ``ModelConfig`` this run builds: the ``model`` preset with ``architecture``."""
        return model_config(self.model, self.architecture)

    def stage(self, name: str) -> StageSettings:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}: choose from {STAGES}")
        return getattr(self, name)

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.gpus_per_worker > 0 else "fp32"


@preset(TrainConfig, "tiny")
def _tiny() -> dict[str, Any]:
    # The embedded bundle's recipe (`mrgen train all --config tiny` on the default phantom DB: about two hours on
    # 2 CPU cores; its manifest records the run). Tests and the demo's `--generator train` set fewer steps.
    return {
        "model": "tiny", "resolution": 64,
        "vae": {"lr": 2e-3, "batch_size": 8, "max_steps": 3000, "warmup_steps": 50},
        "unet": {"lr": 2e-3, "batch_size": 8, "max_steps": 12000, "warmup_steps": 100},
        "controlnet": {"lr": 3e-3, "batch_size": 8, "max_steps": 10000, "warmup_steps": 200},
        "checkpoint_every": 1000, "keep_checkpoints": 2, "sample_every": 2000, "log_every": 50,
        "num_workers": 1, "cpus_per_worker": 0.5, "scaling_samples": 64, "data_repeat": 4, "cache_data": True,
    }


@preset(TrainConfig, "paper")
def _paper() -> dict[str, Any]:
    # §4.1: 8 GPUs; AE lr 5e-5 batch 256 for 50K; UNet lr 1e-5 batch 256 for 200K; controller lr 1e-5 batch 128 for 40K.
    return {
        "model": "paper", "resolution": 512,
        "vae": {"lr": 5e-5, "batch_size": 32, "max_steps": 50_000, "warmup_steps": 500},
        "unet": {"lr": 1e-5, "batch_size": 32, "max_steps": 200_000, "warmup_steps": 1000},
        "controlnet": {"lr": 1e-5, "batch_size": 16, "max_steps": 40_000, "warmup_steps": 500},
        "checkpoint_every": 2000, "keep_checkpoints": 3, "sample_every": 2000, "log_every": 50,
        "num_workers": 8, "gpus_per_worker": 1, "cpus_per_worker": 4, "torch_threads": 4, "scaling_samples": 256,
        "shuffle_buffer": 1024,
    }
