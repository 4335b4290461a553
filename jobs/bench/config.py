"""Configuration of `mrgen bench` (section ``bench``): one mapping per benchmark, keyed by its name.

A benchmark's flags override its own mapping (``mrgen bench db --volumes 4`` is ``--set db.volumes=4``); `mrgen bench
all` takes the whole section. Inputs (``--db``, ``--model``, ``--train-out``, ``--out``) stay flags. The values do not
depend on scale (``gpu.tiny`` picks the GPU check's mode): the presets ``tiny`` and ``paper`` are the defaults.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mrgen.models.sampling import SAMPLING_PRESETS
from mrgen.platform.config import ConfigBase, same_at_every_scale

GPU_SECTIONS = ("tiny_stages", "paper_training", "synthesis", "endpoint", "generator_efficiency")


class DbBench(ConfigBase):
    """`mrgen bench db`: ingest and read throughput."""

    volumes: int = Field(8, ge=1, description="NIfTI volumes to generate and ingest")
    slices: int = Field(64, ge=1, description="slices per volume")
    size: int = Field(128, ge=1, description="source slice size in pixels")
    resolution: int = Field(64, ge=1, description="DB resolution")
    batch_size: int = Field(64, ge=1, description="read batch size")
    repeats: int = Field(2, ge=1, description="reads per source; the best is reported")
    rescans: int = Field(4, ge=1, description="without --db: the DB at volume is the tiny phantom in this many "
                                              "acquisitions per volume (the million-slice path at small N)")
    subset_dataset: str = Field("phantom-src", description="the DB at volume's subset (pruned by the index, and "
                                                           "the smaller point of the reader's RSS): this dataset")
    subset_split: str = Field("train", description="... and this split")


class TrainBench(ConfigBase):
    """`mrgen bench train`: Ray Train + DeepSpeed vs. a bare PyTorch loop."""

    steps: int = Field(40, ge=1, description="optimizer steps of each loop")
    batch_size: int = Field(8, ge=1, description="micro-batch")


class ServeBench(ConfigBase):
    """`mrgen bench serve`: service throughput and latency, batching on vs. off."""

    clients: int = Field(8, ge=1, description="concurrent closed-loop clients (loopback only)")
    duration: float = Field(20.0, gt=0, description="seconds of load per run")
    n: int = Field(1, ge=1, le=20, description="candidates per request")
    steps: int = Field(SAMPLING_PRESETS["default"].steps, ge=1,
                       description="sampling steps per request (default: the demo generator's; at 4 the proxy and "
                                   "ingress, not sampling, dominate a request)")
    max_batch_size: int = Field(8, ge=1, description="max batch of the 'batching on' run")
    rounds: int = Field(3, ge=1, description="rounds of load, each on both services in turn (the order alternating): "
                                             "the ratio's interval is over rounds")


class AdaptiveBench(ConfigBase):
    """`mrgen bench adaptive`: generator-seconds per kept sample, adaptive budget vs. every candidate."""

    masks: int = Field(16, ge=1, description="source masks (spread over the DB's training slices)")
    candidates: int = Field(8, ge=1, description="candidates per mask without the adaptive budget")
    keep: int = Field(2, ge=1, description="candidates kept per mask")
    wave_size: int = Field(2, ge=1, description="candidates per wave (adaptive)")


class SynthBench(ConfigBase):
    """`mrgen bench synth`: synthesis candidates/s and peak memory at 1x and scale x masks."""

    masks: int = Field(2, ge=1, description="masks of the 1x run (the large run uses scale times more)")
    scale: int = Field(10, ge=1, description="mask multiplier of the large run")
    candidates: int = Field(4, ge=1, description="candidates per mask")
    steps: int = Field(SAMPLING_PRESETS["tiny"].steps, ge=1, description="sampling steps")
    sam2_size: int = Field(256, ge=1, description="SAM2 image size")


class ElasticBench(ConfigBase):
    """`mrgen bench elastic`: nodes join and die under synthesis and training."""

    masks: int = Field(32, ge=1, description="phantom masks per target modality (2 modalities)")
    train_steps: int = Field(60, ge=0, description="steps of the training runs (0: no training)")


class VolumeBench(ConfigBase):
    """`mrgen bench volume`: synthesis of many masks on a local multi-node cluster: rate, memory, files, resume."""

    masks: int = Field(10_000, ge=2, description="masks of the full and resumed runs (source slices x modalities)")
    at: int = Field(1_000, ge=1, description="the early point: rate and driver RSS up to it vs at the end")
    modalities: int = Field(4, ge=1, description="target modalities: each source mask is used once per modality")
    workers: int = Field(2, ge=1, description="worker nodes beside the head")
    steps: int = Field(2, ge=1, description="sampling steps (1 candidate per mask, filter none)")
    shard_rows: int = Field(256, ge=1, description="synthesis output.shard_rows (kept slices per shard; keep 1)")
    generator_batch: int = Field(8, ge=1, description="masks per generator (and filter) call")
    medsam_masks: int = Field(240, ge=1, description="masks of the medsam run, where a node joins part-way")
    join_steps: int = Field(40, ge=1, description="sampling steps of the medsam run: enough that generating lasts "
                                                  "past the join (at 2 steps the generator had finished before an "
                                                  "actor could start on the new node)")
    kill_at: float = Field(0.5, gt=0, lt=1, description="the resumed run's driver is killed at this share published")


class CostBench(ConfigBase):
    """`mrgen bench cost`: TFLOP and seconds per kept slice of each synthesis recipe, and its downstream Dice."""

    masks: int = Field(48, ge=2, description="source training masks (spread), the same for every recipe")
    recipes: list[str] = Field(["R0", "R1", "R1-early", "R2"], min_length=1,
                               description="recipes to run (jobs/bench/cost_bench.py RECIPES: R0 the release's, R1 "
                                           "the default, R1-early R1 with early rejection, R2 `--config cheap`)")
    baseline: str = Field("R0", description="the recipe every other is compared with")
    recipe_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                        description="recipe → synthesis settings replacing its own, "
                                                                    "a JSON object, e.g. {\"R2\": {\"steps\": 6}}")
    probe_masks: int = Field(16, ge=1, description="source test masks of the run that calibrates early rejection's "
                                                   "cut")
    probe_candidates: int = Field(8, ge=1, description="candidates per mask of that run, all finished")
    max_passes_lost: float = Field(0.1, ge=0, le=1, description="the calibrated cut stops at most this share of the "
                                                               "candidates that would have passed")
    segment_epochs: int = Field(5, ge=1, description="epochs of 300 iterations of each recipe's segmenter")
    segmenter_seeds: int = Field(2, ge=1, description="segmenters per recipe (seeds 0..n-1; Dice averaged per "
                                                      "volume)")
    seed: int = Field(0, description="synthesis seed")


class GpuBench(ConfigBase):
    """`mrgen bench gpu`: the GPU check."""

    device: Literal["cuda", "cpu"] | None = Field(None, description="where to run (None: cuda when torch sees one, "
                                                                    "else cpu)")
    tiny: bool = Field(False, description="tiny preset, a few steps per section (CI's mode; the default on the CPU)")
    sections: list[Literal[GPU_SECTIONS]] | None = Field(None, min_length=1,
                                                         description="run only these sections (None: all of them)")
    autotune: bool = Field(True, description="generator_efficiency: its compiled variants tune kernels per shape "
                                             "(torch.compile max-autotune; minutes of compiling at paper scale); "
                                             "--no-autotune: inductor's default kernels (modes default and "
                                             "reduce-overhead)")


@same_at_every_scale
class BenchConfig(ConfigBase):
    """Settings of every `mrgen bench` benchmark."""

    section = "bench"
    db: DbBench = Field(default_factory=DbBench, description="`mrgen bench db`")
    train: TrainBench = Field(default_factory=TrainBench, description="`mrgen bench train`")
    serve: ServeBench = Field(default_factory=ServeBench, description="`mrgen bench serve`")
    adaptive: AdaptiveBench = Field(default_factory=AdaptiveBench, description="`mrgen bench adaptive`")
    synth: SynthBench = Field(default_factory=SynthBench, description="`mrgen bench synth`")
    elastic: ElasticBench = Field(default_factory=ElasticBench, description="`mrgen bench elastic`")
    gpu: GpuBench = Field(default_factory=GpuBench, description="`mrgen bench gpu`")
    cost: CostBench = Field(default_factory=CostBench, description="`mrgen bench cost`")
    volume: VolumeBench = Field(default_factory=VolumeBench, description="`mrgen bench volume`")
