"""The Serve application builder: ingress (FastAPI) → generator (batched, autoscaled) → optional filter.

`build_app` is what `serve run mrgen.serving.app:build_app model=...`, a Serve config file's
``import_path: mrgen.serving.app:build_app`` and `mrgen serve` all call; Serve validates the config file's
``args`` into `GeneratorAppArgs`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from mrgen.platform.config import flatten, split_override
from mrgen.serving.config import ServeConfig
from mrgen.serving.generator import GeneratorReplica
from mrgen.serving.ingress import Ingress
from mrgen.serving.filter import Filter

_METRIC_INTERVAL_VARS = ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
                         "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S")


class GeneratorAppArgs(BaseModel):
    """Arguments of `build_app`: a model bundle and the service config (preset, YAML file or mapping)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model bundle URI; overrides serve.model of the config")
    config: str | dict[str, Any] = Field("tiny", description="ServeConfig preset name, YAML path, or its fields")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, as `--set`")

    def resolve(self) -> ServeConfig:
        if isinstance(self.config, dict):
            data = dict(self.config.get("serve", self.config))
            preset_name = data.pop("preset", None)
            base = ServeConfig.load(preset_name) if preset_name else ServeConfig()
            config = base.with_overrides(flatten(data))
        else:
            config = ServeConfig.load(self.config)
        config = config.with_overrides({**dict(map(split_override, self.overrides)), "model": self.model})
        if not config.model:
            raise ValueError("no model bundle: give GeneratorAppArgs.model (mrgen serve --model URI) or serve.model")
        return config


def build_app(args: GeneratorAppArgs | dict[str, Any]) -> Application:
    """Bind the deployments of one service from its config."""
    if not isinstance(args, GeneratorAppArgs):
        args = GeneratorAppArgs.model_validate(args)
    return build_app_from_config(args.resolve())


def build_app_from_config(config: ServeConfig) -> Application:
    config = config.resolved()  # the filter as it runs (kind auto: the bundle's own calibration), one for all replicas
    res = config.resources
    env = _runtime_env(config)
    quality_filter = None
    if config.filter.enabled:
        quality_filter = serve.deployment(Filter, name="Filter").options(
            num_replicas=1, max_ongoing_requests=4,
            ray_actor_options={"num_cpus": res.filter_cpus, "num_gpus": res.filter_gpus, **env},
        ).bind(config.filter.model_dump(), res.torch_threads, res.filter_gpus > 0)
    generator = serve.deployment(GeneratorReplica, name="Generator").options(
        autoscaling_config=config.autoscaling.to_ray(),
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options={"num_cpus": res.generator_cpus, "num_gpus": res.generator_gpus, **env},
        graceful_shutdown_timeout_s=config.request_timeout_s,
    ).bind(config.model, config.batching.max_batch_size, config.batching.batch_wait_timeout_s,
           res.torch_threads, res.generator_gpus > 0, config.organ_weights or None,
           quality_filter if config.filter.early_reject_at is not None else None)
    ingress = serve.deployment(Ingress, name="Ingress").options(
        num_replicas=1, max_ongoing_requests=max(64, 4 * config.max_ongoing_requests),
        ray_actor_options={"num_cpus": res.ingress_cpus, **env},
    )
    return ingress.bind(generator, quality_filter, config.model_dump(mode="json"))


def _runtime_env(config: ServeConfig) -> dict[str, Any]:
    """Short autoscaling metric intervals reach the replicas (and the handles inside them) as env vars."""
    interval = config.autoscaling.metrics_interval_s
    if interval is None:
        return {}
    return {"runtime_env": {"env_vars": {name: str(interval) for name in _METRIC_INTERVAL_VARS}}}


