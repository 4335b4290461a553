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

import numpy as np
import torch
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from mrgen.models.acceleration import inference_dtype
from mrgen.models.bundle import ModelBundle, bundle_hash
from mrgen.models.pipeline import MRGenPipeline
from mrgen.serving.schemas import GenerationJob, GenerationResult

BATCH_SIZE_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 32]


class GeneratorReplica:
    """Wraps `MRGenPipeline` (built once in `__init__`, like nnU-Net's predictor) behind a batched call."""

    def __init__(self, model_uri: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.05,
                 torch_threads: int = 1, use_gpu: bool = False, organ_weights: dict[str, float] | None = None):
        torch.set_num_threads(torch_threads)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model_uri = model_uri
        self.bundle = ModelBundle.load(model_uri, device=device, dtype=inference_dtype(device),
                                       organ_weights=organ_weights)
        self.bundle_id = bundle_hash(model_uri)
        self.pipeline = MRGenPipeline(self.bundle)
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
        first = group[0]
        prompts = [job.prompt for job in group for _ in job.seeds]
        masks = np.stack([job.mask for job in group for _ in job.seeds])
        seeds = [seed for job in group for seed in job.seeds]
        organ_maps = [job.organ_map for job in group for _ in job.seeds]
        start = time.perf_counter()
        images = self.pipeline.generate(prompts, masks, 1, first.sampling, seeds=seeds, organ_maps=organ_maps)
        self._seconds.observe(time.perf_counter() - start)
        self._batch_size.observe(len(group))
        self._candidates.inc(len(seeds))
        images = np.asarray(images, dtype=np.float32)
        out, offset = [], 0
        for job in group:
            n = len(job.seeds)
            out.append(GenerationResult(images=images[offset:offset + n], seeds=list(job.seeds),
                                        batch_size=len(group), bundle_id=self.bundle_id))
            offset += n
        return out


def _size_multiple(bundle) -> int:
    """Mask sides must divide by the autoencoder's downsampling times the UNet's (so latents stay whole)."""
    try:
        vae_factor = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(bundle.unet.config.block_out_channels) - 1)
        return int(vae_factor * unet_factor)
    except AttributeError:
        return 8
