"""`ServeConfig`: the online generation service (section ``serve``), presets ``tiny`` (CPU) and ``paper`` (GPU)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from pydantic import Field, model_validator

from mrgen.models.sampling import (
    EARLY_REJECT_AT_HELP, EARLY_REJECT_BELOW_HELP, PAPER_SAMPLING, SAMPLING_PRESETS, SamplingSettings,
    check_early_reject_cut, early_stop_step,
)
from mrgen.models.scorers import FilterSettings
from mrgen.models.selection import ThresholdConfig, load_calibration
from mrgen.platform.config import ConfigBase, ConfigError, preset
from mrgen.serving.schemas import EarlyReject


class AutoscalingSettings(ConfigBase):
    """Replica count of the generator deployment (Ray Serve ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(1, ge=1, description="upper bound under load")
    initial_replicas: int | None = Field(None, ge=0, description="replicas at start (default: min_replicas)")
    target_ongoing_requests: float = Field(2.0, gt=0, description="ongoing requests per replica Serve aims for")
    upscale_delay_s: float = Field(5.0, ge=0, description="load must stay high this long before adding a replica")
    downscale_delay_s: float = Field(30.0, ge=0, description="load must stay low this long before removing one")
    look_back_period_s: float = Field(10.0, gt=0, description="window over which ongoing requests are averaged")
    metrics_interval_s: float | None = Field(
        None, gt=0, description="how often replicas and handles push autoscaling metrics (Ray's default 10 s when "
                                "unset); short values make tests react quickly")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def to_ray(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BatchingSettings(ConfigBase):
    """How the generator groups concurrent requests into one sampling batch (``@serve.batch``)."""

    max_batch_size: int = Field(8, ge=1, description="requests per sampling batch; 1 turns batching off")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long the first request waits for company")


class ResourceSettings(ConfigBase):
    """Resources of one replica."""

    generator_cpus: float = Field(1.0, gt=0, description="CPUs per generator replica")
    generator_gpus: float = Field(0.0, ge=0, description="GPUs per generator replica")
    ingress_cpus: float = Field(0.5, ge=0, description="CPUs per ingress replica")
    filter_cpus: float = Field(1.0, ge=0, description="CPUs per SAM2 filter replica")
    filter_gpus: float = Field(0.0, ge=0, description="GPUs per SAM2 filter replica")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads in each replica")


class LimitSettings(ConfigBase):
    """Bounds on a request; anything outside is a 4xx naming the field."""

    max_body_bytes: int = Field(2_000_000, ge=1024, description="largest request body")
    max_n: int = Field(20, ge=1, le=20, description="most candidates per request (the paper's 20)")
    max_steps: int = Field(100, ge=1, description="most sampling steps per request")
    max_image_size: int = Field(512, ge=16, description="largest mask height or width in pixels")
    max_guidance: float = Field(30.0, gt=0, description="largest classifier-free guidance scale")
    max_conditioning_scale: float = Field(5.0, gt=0, description="largest mask controller weight")


class ServeFilterSettings(FilterSettings):
    """Optional filter deployment: scores candidates per organ and keeps those passing thresholds (the filter section
    of `mrgen synthesize`, and a scorer ``auto``). A request with ``keep`` generates its candidates in waves and stops
    once ``keep`` pass the strict thresholds (the adaptive budget of `mrgen synthesize`)."""

    # the thresholds stood in the section itself before they had their own mapping
    renamed = {name: f"thresholds.{name}" for name in ThresholdConfig.model_fields}
    kind: Literal["auto", "none", "sam2", "medsam"] = Field(
        "auto", description="scorer of the filter deployment. auto: the scorer `thresholds_file` was calibrated for, "
                            "else the one of the bundle's own calibration (filter_thresholds.json, which the "
                            "embedded bundle ships), else none; none: no filter (requests with `keep` are refused)")
    candidates: int = Field(4, ge=1, le=20, description="most candidates a request with `keep` and no `n` generates "
                                                        "(at least its keep, at most limits.max_n)")
    adaptive: bool = Field(True, description="generate a request's candidates in waves, each scored before the next, "
                                             "and stop once `keep` pass the strict thresholds (false: all n at once)")
    wave_size: int | None = Field(None, ge=1, description="candidates per wave (None: the request's keep, the fewest "
                                                          "that can satisfy it)")
    early_reject_at: float | None = Field(None, gt=0, lt=1, description=f"requests with keep: {EARLY_REJECT_AT_HELP}; "
                                                                        "a request whose steps leave no step between "
                                                                        "the first and the last samples to the end")
    early_reject_below: float = Field(0.0, ge=0, le=1, description=EARLY_REJECT_BELOW_HELP)

    @model_validator(mode="after")
    def _early_rejection(self) -> ServeFilterSettings:
        check_early_reject_cut(self.early_reject_at, self.early_reject_below)
        if self.early_reject_at is not None and self.kind == "none":
            raise ValueError(f"early_reject_at ({self.early_reject_at}) needs a filter (kind auto, sam2 or medsam)")
        return self

    def early_rejection(self, steps: int) -> EarlyReject | None:
        """How a request with keep sampled in ``steps`` steps is judged mid-sampling (None: it is not)."""
        if self.early_reject_at is None:
            return None
        try:
            early_stop_step(self.early_reject_at, steps)
        except ValueError:
            return None
        return EarlyReject(self.early_reject_at, self.early_reject_below)

    def resolved(self, model: str | None = None) -> ServeFilterSettings:
        """These settings as the service runs them: ``auto`` made the scorer of ``thresholds_file`` or of the bundle
        ``model``'s own calibration (or none), that file's thresholds in place (ConfigError naming it if unusable)."""
        if self.kind == "none":
            return self
        file = self.thresholds_file
        if self.kind == "auto" and not file and model:
            from mrgen.models.manifest import bundle_thresholds_file  # pyarrow: not at the CLI's start

            file = bundle_thresholds_file(model)
        if not file:
            return self.model_copy(update={"kind": "none"}) if self.kind == "auto" else self
        try:
            kind = load_calibration(file).scorer if self.kind == "auto" else self.kind
            return self.model_copy(update={"kind": kind}).calibrated(file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"serve.filter.thresholds_file {file}: {exc} (serve.filter.kind)") from None

    def per_wave(self, n: int, keep: int) -> int:
        """Candidates per wave of a request for ``n`` keeping ``keep``."""
        return min(n, self.wave_size or keep) if self.adaptive else n

    def describe(self) -> list[str]:
        """Lines for a person: the scorer and the thresholds in force (and their file), and the budget of ``keep``."""
        if not self.enabled:
            return ["filter none (requests with keep are refused)"]
        source = f" ({self.thresholds_file})" if self.thresholds_file else ""
        waves = (f"in waves of {self.wave_size or 'their keep'} until keep pass strictly" if self.adaptive
                 else "all n at once")
        t = self.thresholds
        early = (f"; x̂₀ scored at {self.early_reject_at:g} of the steps, candidates below mean IoU "
                 f"{self.early_reject_below:g} stopped there" if self.early_reject_at is not None else "")
        return [f"filter {self.kind} ({self.rule} rule) at organ IoU {t.organ_iou:g}, organ conf "
                f"{t.organ_conf:g}, mean IoU {t.mean_iou:g}, mean conf {t.mean_conf:g}{source}",
                f"requests with keep: candidates generated {waves}, at most n ({self.candidates} when not "
                f"given){early}"]


class ServeConfig(ConfigBase):
    """The online generation endpoint: ingress (FastAPI) → generator (batched) → optional filter (SAM2 or
    LiteMedSAM)."""

    section = "serve"
    # the request defaults before they were the sampling section
    renamed = {f"default_{name}": f"sampling.{name}" for name in SamplingSettings.__pydantic_fields__}
    model: str | None = Field(None, description="model bundle URI (folder written by ModelBundle.save)")
    app_name: str = Field("mrgen", description="Serve application name")
    route_prefix: str = Field("/", description="HTTP route prefix of the application")
    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the Serve proxy")
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    max_ongoing_requests: int = Field(16, ge=1, description="requests a generator replica accepts at once")
    max_queued_requests: int = Field(64, ge=-1, description="requests waiting for a replica before 503 (-1: no cap)")
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    sampling: SamplingSettings = Field(PAPER_SAMPLING, description="how a request is sampled where it gives none of "
                                                                   "these settings (default: the release's)")
    modality_attributes: dict[str, str] = Field(
        default_factory=dict, description="extra modality label → attributes (as db.modality_attributes at training; "
                                          "official release bundles: the whole table, e.g. its "
                                          "modality_attributes.json via `mrgen serve --attributes FILE`)")
    organ_weights: dict[str, float] = Field(default_factory=dict, description="official release bundles: organ "
                                            "name → w of the mask condition 2·w − 1 (default 1.0)")
    auth_token: str | None = Field(None, description="bearer token required on /v1 routes (None: open)")
    auth_token_env: str | None = Field(None, description="name of an environment variable holding the token")
    request_timeout_s: float = Field(120.0, gt=0, description="a request taking longer gets 504")
    filter: ServeFilterSettings = Field(default_factory=ServeFilterSettings)

    @model_validator(mode="after")
    def _batch_fits(self) -> "ServeConfig":
        if self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                             f"batching.max_batch_size ({self.batching.max_batch_size}) or batches never fill")
        if self.limits.max_steps < self.sampling.steps:
            raise ValueError(f"sampling.steps ({self.sampling.steps}) > limits.max_steps ({self.limits.max_steps})")
        return self

    def resolved(self) -> ServeConfig:
        """The service as it runs: the filter's scorer and thresholds in place (:meth:`FilterSettings.resolved`)."""
        return self.model_copy(update={"filter": self.filter.resolved(self.model)})

    def resolve_token(self) -> str | None:
        """The bearer token: ``auth_token``, else the variable ``auth_token_env`` names (which must be set)."""
        if self.auth_token:
            return self.auth_token
        if self.auth_token_env:
            value = os.environ.get(self.auth_token_env)
            if not value:
                raise ConfigError(f"serve.auth_token_env: environment variable {self.auth_token_env!r} is not set")
            return value
        return None


@preset(ServeConfig, "tiny")
def _tiny() -> dict[str, Any]:
    return dict(
        autoscaling=dict(min_replicas=1, max_replicas=2, target_ongoing_requests=2, upscale_delay_s=1.0,
                         downscale_delay_s=5.0, look_back_period_s=2.0, metrics_interval_s=0.5),
        max_ongoing_requests=8, max_queued_requests=64,
        batching=dict(max_batch_size=8, batch_wait_timeout_s=0.05),
        resources=dict(generator_cpus=0.25, ingress_cpus=0.25, filter_cpus=0.25, torch_threads=1),
        limits=dict(max_body_bytes=1_000_000, max_n=20, max_steps=50, max_image_size=128),
        sampling=dataclasses.replace(SAMPLING_PRESETS["tiny"], steps=2).kwargs(),  # 2 steps: quick CPU requests
        request_timeout_s=60.0,
        filter=dict(kind="auto", scorer=dict(config_name="tiny", image_size=256, random=True)),
    )


@preset(ServeConfig, "paper")
def _paper() -> dict[str, Any]:
    return dict(
        autoscaling=dict(min_replicas=1, max_replicas=8, target_ongoing_requests=4, upscale_delay_s=10.0,
                         downscale_delay_s=300.0, look_back_period_s=30.0),
        max_ongoing_requests=16, max_queued_requests=256,
        batching=dict(max_batch_size=8, batch_wait_timeout_s=0.1),
        resources=dict(generator_cpus=4, generator_gpus=1, ingress_cpus=1, filter_cpus=2, filter_gpus=0.5,
                       torch_threads=4),
        limits=dict(max_body_bytes=4_000_000, max_n=20, max_steps=100, max_image_size=512),
        sampling=SAMPLING_PRESETS["paper"].kwargs(),
        request_timeout_s=600.0,
        filter=dict(kind="sam2", scorer=dict(config_name="large", image_size=1024, embed_batch=4)),  # GPU: batched
    )
