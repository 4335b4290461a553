"""Generator deployment: loads the model bundle once per replica, samples batches of compatible requests.

Concurrent calls are collected by `@serve.batch`; inside one collected batch, jobs with equal settings
(sampling settings, image size) become ONE pipeline call with every candidate of every
job, and jobs with other settings get their own call. Each image has its own seed, so a candidate is the same
whatever it is batched with.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from mrgen.models.acceleration import inference_dtype
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import bundle_hash
from mrgen.models.pipeline import EarlyStop, MRGenPipeline
from mrgen.serving.schemas import GenerationJob, GenerationResult

BATCH_SIZE_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 32]


def replica_pipeline(model_uri: str, use_gpu: bool = False,
                     organ_weights: dict[str, float] | None = None) -> MRGenPipeline:
    """The pipeline a replica samples with: the bundle on the replica's device (a GPU where it was given one and
    torch sees it) in that device's inference dtype."""
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return MRGenPipeline(ModelBundle.load(model_uri, device=device, dtype=inference_dtype(device),
                                          organ_weights=organ_weights))


def sample_jobs(pipeline: MRGenPipeline, group: list[GenerationJob],
                probe: Callable[[GenerationJob, np.ndarray], Sequence[float]] | None = None,
                ) -> list[tuple[np.ndarray, list[int]]]:
    """Every candidate of ``group`` (jobs of one ``batch_key``) in one pipeline call: per job, its finished images
    (float32 [m, H, W]) and their seeds. ``probe(job, x̂₀ images)``: the filter's mean IoU of each, which stops the
    candidates of a job with ``early_reject`` below its cut (None: every candidate finishes)."""
    prompts = [job.prompt for job in group for _ in job.seeds]
    masks = np.stack([job.mask for job in group for _ in job.seeds])
    seeds = [seed for job in group for seed in job.seeds]
    organ_maps = [job.organ_map for job in group for _ in job.seeds]
    owner = np.array([j for j, job in enumerate(group) for _ in job.seeds])
    early_stop = None
    if probe is not None and group[0].early_reject is not None:  # the batch key: every job is judged at one step
        def judge(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
            go_on = np.ones(len(rows), bool)
            for j in np.unique(owner[rows]):
                mine = np.flatnonzero(owner[rows] == j)
                go_on[mine] = np.asarray(probe(group[j], images[mine])) >= group[j].early_reject.below
            return go_on

        early_stop = EarlyStop(group[0].early_reject.at, judge)
    result = pipeline.sample(prompts, masks, 1, group[0].sampling, seeds=seeds, organ_maps=organ_maps,
                             early_stop=early_stop)
    images = np.asarray(result.images, dtype=np.float32)
    out, taken = [], 0
    for j, job in enumerate(group):
        finished = result.finished[owner == j]
        out.append((images[taken:taken + finished.sum()], [s for s, ok in zip(job.seeds, finished) if ok]))
        taken += int(finished.sum())
    return out


class GeneratorReplica:
    """Wraps `MRGenPipeline` (built once in `__init__`, like nnU-Net's predictor) behind a batched call."""

    def __init__(self, model_uri: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.05,
                 torch_threads: int = 1, use_gpu: bool = False, organ_weights: dict[str, float] | None = None,
                 quality_filter=None):
        torch.set_num_threads(torch_threads)
        self.model_uri = model_uri
        self.pipeline = replica_pipeline(model_uri, use_gpu, organ_weights)
        self.bundle = self.pipeline.bundle
        self.bundle_id = bundle_hash(model_uri)
        self.filter = quality_filter  # the Filter deployment's handle: early rejection asks it about x̂₀
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.max_batch_size = max_batch_size
        self._waiting = 0
        self._batch_size = Histogram("mrgen_generator_batch_size", "requests per sampling call",
                                     boundaries=BATCH_SIZE_BOUNDARIES)
        self._candidates = Counter("mrgen_generator_candidates_total", "candidate images generated")
        self._queue = Gauge("mrgen_generator_queue_length", "requests waiting or sampling in this replica")
        self._seconds = Histogram("mrgen_generator_sampling_seconds", "seconds per sampling call",
                                  boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120])

    def info(self) -> dict:
        """What the ingress needs to validate requests and write prompts: bundle id, native resolution, size
        multiple, mask condition and prompt template (the official release's bundles have their own)."""
        return {"bundle_id": self.bundle_id, "model_uri": self.model_uri, "resolution": self.bundle.resolution,
                "size_multiple": _size_multiple(self.bundle), "max_batch_size": self.max_batch_size,
                "condition": self.pipeline.condition.manifest_fields(),
                "prompt_template": self.bundle.manifest.get("prompt_template", "mrgen")}

    async def generate(self, job: GenerationJob) -> GenerationResult:
        self._waiting += 1
        self._queue.set(self._waiting)
        try:
            return await self._batched(job)
        finally:
            self._waiting -= 1
            self._queue.set(self._waiting)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[GenerationJob]) -> list[GenerationResult]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[job.batch_key].append(index)
        results: list[GenerationResult | None] = [None] * len(jobs)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            # The pipeline is CPU/GPU-bound: a thread keeps this replica's event loop answering health checks
            # and queueing the next batch meanwhile.
            for i, result in zip(indices, await asyncio.to_thread(self._sample, group)):
                results[i] = result
        return results

    def _sample(self, group: list[GenerationJob]) -> list[GenerationResult]:
        start = time.perf_counter()
        per_job = sample_jobs(self.pipeline, group, self._probe if self.filter is not None else None)
        self._seconds.observe(time.perf_counter() - start)
        self._batch_size.observe(len(group))
        self._candidates.inc(sum(len(job.seeds) for job in group))
        return [GenerationResult(images=images, seeds=seeds, batch_size=len(group), bundle_id=self.bundle_id,
                                 stopped=len(job.seeds) - len(seeds)) for job, (images, seeds) in zip(group, per_job)]

    def _probe(self, job: GenerationJob, images: np.ndarray) -> list[float]:
        # called in the sampling thread, off the replica's event loop: a blocking call on the handle is allowed here
        return self.filter.probe.remote(images, job.mask, job.organ_map, job.organs).result()


def _size_multiple(bundle) -> int:
    """Mask sides must divide by the autoencoder's downsampling times the UNet's (so latents stay whole)."""
    try:
        vae_factor = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(bundle.unet.config.block_out_channels) - 1)
        return int(vae_factor * unet_factor)
    except AttributeError:
        return 8
