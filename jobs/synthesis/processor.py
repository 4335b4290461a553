"""The synthesis processor: one config, ordered small stages, chained as lazy ``map_batches``.

    prepare (tasks) → generator (actor pool) → filter (actor pool) → selection (tasks) → records (tasks)
    → writer (tasks, one flush of masks a call)

With ``adaptive`` the generator and filter become one stage (waves, and early rejection's judgement of x̂₀
mid-sampling, need the filter's verdict); with
``filter=none`` there is no filter stage. Calling the processor on a dataset of MRGen-DB slices returns the
lazy dataset of per-mask summaries; nothing runs until it is consumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mrgen.jobs.synthesis.config import StageResources, SynthesisConfig
from mrgen.jobs.synthesis.stages.base import StageSpec, deferred
from mrgen.jobs.synthesis.stages.prepare import PrepareUDF
from mrgen.jobs.synthesis.stages.selection import SelectionUDF
from mrgen.jobs.synthesis.stages.writer import RecordsUDF, WriterUDF

# the actor stages load the generator or the filter: their modules are imported in the actors (torch, diffusers)
GeneratorUDF = deferred("mrgen.jobs.synthesis.stages.generator", "GeneratorUDF", "generator")
AdaptiveUDF = deferred("mrgen.jobs.synthesis.stages.adaptive", "AdaptiveUDF", "adaptive_generate_filter")
FilterUDF = deferred("mrgen.jobs.synthesis.stages.filter", "FilterUDF", "filter")


@dataclass
class RunContext:
    """What the driver knows before the stages run."""

    attributes: dict[str, str]          # target modality → attribute text
    resolution: int                     # the bundle's image size
    bundle_hash: str
    filter_model: str
    scores_meaningful: bool
    wanted: list[str] | None = None     # source slice ids to use (None: all masked slices)
    done: list[str] = field(default_factory=list)      # mask keys already finished in OUT
    preview_keys: list[str] = field(default_factory=list)
    condition: dict[str, Any] = field(default_factory=dict)  # the bundle's MaskCondition manifest fields
    prompt_template: str = "mrgen"      # the bundle's prompt template (datasets/prompt.py PromptRecipe)


def _actors(udf, kwargs, res: StageResources) -> StageSpec:
    return StageSpec(udf, kwargs, batch_size=res.batch_size, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                     resources=res.resources, pool=(res.pool_min, res.pool_max))


def _tasks(udf, kwargs, res: StageResources, batch_size: int | None = None) -> StageSpec:
    return StageSpec(udf, kwargs, batch_size=batch_size or res.batch_size, num_cpus=res.num_cpus,
                     resources=res.resources)


def build_stages(config: SynthesisConfig, ctx: RunContext) -> list[StageSpec]:
    rule, thresholds = config.filter.rule, config.filter.thresholds
    thresholds, relax_by = thresholds.thresholds(), thresholds.relax_by
    scorer = dict(kind=config.filter.kind, scorer=config.filter.scorer)
    sampling = dict(sampling=config.sampling, run_seed=config.seed,
                    batch_size=config.gen_batch_size, torch_threads=config.torch_threads,
                    fault_marker=config.fault_marker, organ_weights=config.organ_weights or None)
    stages = [_tasks(PrepareUDF, dict(modalities=ctx.attributes, resolution=ctx.resolution,
                                      min_area=config.min_mask_area, wanted=ctx.wanted, done=ctx.done,
                                      condition=ctx.condition, prompt_template=ctx.prompt_template),
                     config.light, 16)]
    stages[0].block_rows = config.generator.batch_size  # one generator batch per block: masks spread over actors
    if config.adaptive:
        stages.append(_actors(AdaptiveUDF, dict(bundle_uri=config.model, candidates=config.candidates,
                                                wave_size=config.wave_size, keep=config.keep, rule=rule,
                                                thresholds=thresholds, early_reject_at=config.early_reject_at,
                                                early_reject_below=config.early_reject_below, **scorer, **sampling),
                              config.generator))
    else:
        stages.append(_actors(GeneratorUDF, dict(bundle_uri=config.model, candidates=config.candidates, **sampling),
                              config.generator))
        if config.filter.enabled:
            stages.append(_actors(FilterUDF, dict(**scorer, torch_threads=config.torch_threads), config.filter_stage))
    stages.append(_tasks(SelectionUDF, dict(keep=config.keep, rule=rule, thresholds=thresholds,
                                            relax_by=relax_by, top_k=config.official_top_k,
                                            filtered=config.filter.enabled), config.light))
    stages.append(_tasks(RecordsUDF, dict(bundle_hash=ctx.bundle_hash, filter_model=ctx.filter_model,
                                          scores_meaningful=ctx.scores_meaningful, rule=rule,
                                          dataset_suffix=config.dataset_suffix, preview_keys=ctx.preview_keys),
                         config.light))
    flush = config.output.masks_per_flush(config.keep)
    stages[-1].block_rows, stages[-1].gather_blocks = flush, True  # one flush's packed records per block
    stages.append(_tasks(WriterUDF, dict(out=config.out), config.light, flush))
    return stages


class SynthesisProcessor:
    def __init__(self, config: SynthesisConfig, ctx: RunContext):
        self.config, self.ctx = config, ctx
        self.stages = build_stages(config, ctx)

    def __call__(self, ds):
        for stage in self.stages:
            ds = stage.apply(ds)
        return ds

    def describe(self) -> list[str]:
        return [f"{s.name}: {'actors ' + str(s.pool) if s.pool else 'tasks'}, batch {s.batch_size}, "
                f"cpus {s.num_cpus}, gpus {s.num_gpus}" for s in self.stages]
