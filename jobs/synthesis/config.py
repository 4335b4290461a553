"""Configuration of `mrgen synthesize`, section ``synthesis`` (paper §3.5, §4.1, appendix B.3 / C.2)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mrgen.models.sampling import (
    EARLY_REJECT_AT_HELP, EARLY_REJECT_BELOW_HELP, SAMPLING_PRESETS, SamplingSettings, check_early_reject_cut,
    early_stop_step,
)
from mrgen.models.scorers import FilterSettings
from mrgen.platform.cluster import RayConfig
from mrgen.platform.config import ConfigBase, preset

# R1 of `mrgen bench cost`, the embedded generator's sampling, is the default: 10.7x fewer generator TFLOP per kept
# slice than the release's recipe (the paper preset) and +3.1 [+1.1, +5.3] Dice at equal count (docs/results.md)
DEFAULT = SAMPLING_PRESETS["default"]


class StageResources(ConfigBase):
    """Where one stage runs: CPUs/GPUs per worker, actor pool size and rows per batch."""

    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per worker (fractional on small machines)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (e.g. 1 on a GPU cluster)")
    pool_min: int = Field(1, ge=1, description="smallest actor pool (actor stages only)")
    pool_max: int = Field(1, ge=1, description="largest actor pool (actor stages only)")
    batch_size: int = Field(1, ge=1, description="masks per call of the stage")
    resources: dict[str, float] = Field(default_factory=dict,
                                        description="custom Ray resources per worker, e.g. {'filter_slot': 1} puts "
                                                    "at most as many workers on a node as it offers slots (node "
                                                    "types of a cluster: `ray start --resources`)")

    @model_validator(mode="after")
    def _pool(self) -> StageResources:
        if self.pool_max < self.pool_min:
            raise ValueError(f"pool_max {self.pool_max} < pool_min {self.pool_min}")
        return self


class OutputSettings(ConfigBase):
    """How a run's output is cut into files (jobs/synthesis/stages/writer.py)."""

    shard_rows: int = Field(512, ge=1, description="target kept slices per output shard: the writer gathers the "
                                                   "masks of ceil(shard_rows / keep) (the object store holds their "
                                                   "kept rows and audit records, nothing else), then publishes their "
                                                   "shard and one audit part; a crash loses only masks not yet "
                                                   "published. A shard holds at most shard_rows rows (fewer where "
                                                   "masks are skipped or keep fewer than keep)")

    def masks_per_flush(self, keep: int) -> int:
        return -(-self.shard_rows // keep)


class SynthesisConfig(ConfigBase):
    """Everything `mrgen synthesize` needs; flags override these fields."""

    section = "synthesis"
    # settings that moved into the sampling and filter sections: older files, overrides and recipes still load
    renamed = {"filter": "filter.kind", "scorer": "filter.scorer", "rule": "filter.rule",
               "thresholds": "filter.thresholds", "thresholds_file": "filter.thresholds_file",
               **{name: f"sampling.{name}" for name in SamplingSettings.__pydantic_fields__}}
    model: str | None = Field(None, description="model bundle URI")
    source: str | None = Field(None, description="MRGen-DB URI whose masked slices condition the generation")
    out: str | None = Field(None, description="output URI: a synthetic MRGen-DB plus audit/, metrics.prom, report.json")
    target_modalities: list[str] = Field(default_factory=list,
                                         description="modality labels to synthesise; each mask is used once per label")
    source_datasets: list[str] = Field(default_factory=list,
                                       description="only masks of these source datasets (empty: all)")
    source_splits: list[str] = Field(default_factory=list,
                                     description="only masks of these splits (empty: all; the paper uses train+test)")
    max_masks: int | None = Field(None, ge=1, description="use only N masks (sorted by slice id; see mask_selection)")
    mask_selection: Literal["first", "spread"] = Field("first", description="with max_masks: the first N masks, or N "
                                                                             "evenly spread over all of them (every "
                                                                             "volume and level)")
    min_mask_area: float = Field(0.005, ge=0, lt=1,
                                 description="skip masks covering less than this fraction of the image (official code: "
                                             "0.5 %)")
    modality_attributes: dict[str, str] = Field(default_factory=dict, description="extra modality label → attribute "
                                                "text (official release bundles: the whole table, looked up exactly; "
                                                "--attributes FILE fills it from modality_attributes.json)")
    organ_weights: dict[str, float] = Field(default_factory=dict, description="official release bundles: organ name "
                                            "→ w, condition 2·w − 1 (default 1.0 for every organ)")

    candidates: int = Field(3, ge=1, description="candidates generated per mask (the release's recipe: 20, "
                                                 "`--config paper`)")
    keep: int = Field(2, ge=1, description="candidates kept per mask")
    sampling: SamplingSettings = Field(DEFAULT, description="how candidates are sampled (default: R1 of `mrgen bench "
                                                            "cost`; the release's: DDIM 50, guidance 7, "
                                                            "`--config paper`)")
    seed: int = Field(0, description="run seed; candidate seeds derive from it, the mask id, modality and index")
    gen_batch_size: int | None = Field(None, ge=1,
                                       description="images per UNet forward (None: all candidates of the batch)")
    torch_threads: int = Field(1, ge=1, description="torch threads per actor")

    filter: FilterSettings = Field(default_factory=FilterSettings, description="the quality filter: scorer, rule "
                                                                                "and thresholds (models/scorers.py)")
    official_top_k: int = Field(5, ge=1, description="official rule: candidates ranked by mean IoU considered")
    adaptive: bool = Field(False, description="generate in waves; stop a mask once `keep` candidates pass strictly")
    wave_size: int = Field(4, ge=1, description="candidates per wave (adaptive)")
    early_reject_at: float | None = Field(None, gt=0, lt=1, description=f"adaptive: {EARLY_REJECT_AT_HELP}")
    early_reject_below: float = Field(0.0, ge=0, le=1, description=f"{EARLY_REJECT_BELOW_HELP}: a probe run to "
                                                                    "calibrate the cut")

    generator: StageResources = Field(default_factory=StageResources, description="generator stage resources")
    filter_stage: StageResources = Field(default_factory=StageResources, description="filter stage resources")
    light: StageResources = Field(
        default_factory=lambda: StageResources(batch_size=32),
        description="prepare / selection / records / writer tasks; batch_size: masks per selection and records task "
                    "(a task per generator batch of a few masks spent more on being a task than on its masks: the "
                    "records of a resumed 10,000-mask run fell 800 masks behind the generator, one task at a time)")
    pool_upscale_util: float = Field(1.0, gt=0, description="an actor pool grows (up to pool_max, where resources "
                                                            "are free, e.g. on a node that joined) once its tasks in "
                                                            "flight per actor reach this. 1.0: every busy pool; "
                                                            "Ray Data's default 1.75 grows only a backlogged one, so "
                                                            "a pool downstream of the slowest stage never grew")
    output: OutputSettings = Field(default_factory=OutputSettings, description="shard sizing of the output")
    contact_sheet_masks: int = Field(4, ge=0, description="masks shown on the run's contact sheet")
    dataset_suffix: str = Field("-mrgen", description="synthetic rows get dataset '<source dataset><suffix>'")
    fault_marker: str | None = Field(None,
                                     description="TEST KNOB: a generator actor exits hard once (creating this file) on "
                                                 "its 2nd batch")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> SynthesisConfig:
        if self.keep > self.candidates:
            raise ValueError(f"keep ({self.keep}) > candidates ({self.candidates})")
        if self.adaptive and not self.filter.enabled:
            raise ValueError("adaptive budget needs a filter (filter.kind=sam2 or medsam)")
        if self.early_reject_at is not None:
            if not self.adaptive or not self.filter.enabled:
                raise ValueError(f"early_reject_at ({self.early_reject_at}) needs adaptive=true and a filter "
                                 f"(filter.kind=sam2 or medsam; got adaptive={str(self.adaptive).lower()}, "
                                 f"filter.kind={self.filter.kind}): the adaptive stage scores x̂₀ with the filter")
            try:
                early_stop_step(self.early_reject_at, self.sampling.steps)
            except ValueError as exc:
                raise ValueError(f"early_reject_at: {exc} (sampling.steps={self.sampling.steps})") from None
        check_early_reject_cut(self.early_reject_at, self.early_reject_below)
        return self

    def require_io(self) -> None:
        missing = [name for name in ("model", "source", "out") if not getattr(self, name)]
        if missing:
            raise ValueError(f"synthesis needs {', '.join('--' + m for m in missing)}")
        if not self.target_modalities:
            raise ValueError("synthesis needs at least one --target-modality")


@preset(SynthesisConfig, "tiny")
def _tiny() -> dict:
    return {"candidates": 4, "keep": 2, "sampling": SAMPLING_PRESETS["tiny"].kwargs(),
            "filter": {"scorer": {"image_size": 256}},
            "output": {"shard_rows": 8}, "contact_sheet_masks": 2,
            "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "no_progress_timeout_s": 300}}


@preset(SynthesisConfig, "cheap")
def _cheap() -> dict:
    """R2 of `mrgen bench cost`: 6 denoiser rows a candidate, 3 candidates, the candidates of 4 masks in one batch."""
    return {"candidates": 3, "keep": 2, "sampling": SAMPLING_PRESETS["cheap"].kwargs(), "generator": {"batch_size": 4}}


@preset(SynthesisConfig, "paper")
def _paper() -> dict:
    return {"candidates": 20, "keep": 2, "sampling": SAMPLING_PRESETS["paper"].kwargs(),
            "filter": {"scorer": {"config_name": "large", "image_size": 1024, "embed_batch": 4}},
            "gen_batch_size": 10, "contact_sheet_masks": 8,
            "generator": {"num_cpus": 4, "num_gpus": 1, "pool_min": 1, "pool_max": 8, "batch_size": 1},
            "filter_stage": {"num_cpus": 2, "num_gpus": 0.5, "pool_min": 1, "pool_max": 4, "batch_size": 1},
            "light": {"num_cpus": 1, "batch_size": 8}}
