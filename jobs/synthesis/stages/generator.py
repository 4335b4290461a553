"""Generator stage: each actor loads the model bundle once and produces every candidate of a batch of masks.

Candidates come from ``MRGenPipeline.sample`` with classifier-free guidance; candidate ``i`` of a mask has
seed ``hash(run seed, mask id, modality, i)``, so a rerun (or a retried batch) reproduces it exactly. Each row
also carries what its candidates cost (``denoiser_rows``: a JSON list, one count per candidate, for the audit).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from mrgen.datasets.schema import decode_organ_map, encode_image
from mrgen.jobs.synthesis.keys import candidate_seed
from mrgen.jobs.synthesis.stages.base import StageUDF
from mrgen.jobs.synthesis.stages.codec import decode_row_mask
from mrgen.models.acceleration import inference_dtype
from mrgen.models.bundle import ModelBundle
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.sampling import SamplingSettings


def row_organ_maps(batch: dict[str, np.ndarray], rows: list[int]) -> list[dict[int, str]]:
    """The organ maps (id → name) of ``rows``: the generator conditions on organ names through them."""
    return [decode_organ_map(str(batch["organ_map"][i])) for i in rows]


def pick_device() -> str:
    """The GPU Ray assigned to this actor (num_gpus > 0), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class _FaultKnob:
    """Test knob: the first actor to reach its ``after``-th batch exits hard (once, recorded by a marker file)."""

    def __init__(self, marker: str | None, after: int = 2):
        self.marker, self.after, self.calls = marker, after, 0

    def tick(self) -> None:
        self.calls += 1
        if self.marker and self.calls >= self.after and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


class CandidateSampler:
    """The bundle and sampling settings, shared by the generator and adaptive stages."""

    def __init__(self, bundle_uri: str, sampling: SamplingSettings, run_seed: int, batch_size: int | None,
                 torch_threads: int, organ_weights: dict[str, float] | None = None):
        torch.set_num_threads(torch_threads)
        device = pick_device()
        self.pipeline = MRGenPipeline(ModelBundle.load(bundle_uri, device=device, dtype=inference_dtype(device),
                                                       organ_weights=organ_weights))
        self.sampling = sampling
        self.run_seed, self.batch_size = run_seed, batch_size

    def seeds(self, slice_id: str, modality: str, indices: range) -> list[int]:
        return [candidate_seed(self.run_seed, slice_id, modality, i) for i in indices]

    def generate(self, prompts: list[str], masks: np.ndarray, indices: range, seeds: list[int],
                 organ_maps: list[dict[int, str]]) -> np.ndarray:
        return self.sample(prompts, masks, indices, seeds, organ_maps).images

    def sample(self, prompts: list[str], masks: np.ndarray, indices: range, seeds: list[int],
               organ_maps: list[dict[int, str]], early_stop=None):
        """:meth:`MRGenPipeline.sample`'s result (images and cost per candidate, mask-major), with an optional
        ``EarlyStop``."""
        # the text encoder caches states and encodes the prompts it has not seen in one batch, whose float rounding
        # depends on what else is in it (measured: 1e-6 in images, so 2 of 30 kept candidates of two undisturbed
        # runs differed): encoding each prompt alone makes a candidate independent of the masks an actor saw before
        for prompt in ("", *prompts):
            self.pipeline.bundle.text_encoder.encode([prompt])
        return self.pipeline.sample(prompts, masks, len(indices), self.sampling, seeds=seeds,
                                    batch_size=self.batch_size, organ_maps=organ_maps, early_stop=early_stop)


class GeneratorUDF(StageUDF):
    NAME = "generator"
    REQUIRED = {"source_slice_id": "source slice id (seeds derive from it)", "modality": "target modality label",
                "prompt": "text condition", "mask": "uint8 organ ids (raw bytes)", "height": "rows", "width": "columns",
                "organ_map": "JSON organ id → name", "skip_reason": "non-empty: the mask is skipped"}

    def __init__(self, bundle_uri: str, candidates: int, sampling: SamplingSettings, run_seed: int,
                 batch_size: int | None = None, torch_threads: int = 1, fault_marker: str | None = None,
                 organ_weights: dict[str, float] | None = None):
        self.gen = CandidateSampler(bundle_uri, sampling, run_seed, batch_size, torch_threads, organ_weights)
        self.candidates = candidates
        self.fault = _FaultKnob(fault_marker)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.fault.tick()
        n = len(batch["prompt"])
        todo = [i for i in range(n) if not batch["skip_reason"][i]]
        blobs, counts, seeds_json, rows_json = [b""] * n, [0] * n, ["[]"] * n, ["[]"] * n
        if todo:
            indices = range(self.candidates)
            seeds = [self.gen.seeds(str(batch["source_slice_id"][i]), str(batch["modality"][i]), indices) for i in todo]
            result = self.gen.sample([str(batch["prompt"][i]) for i in todo],
                                     np.stack([decode_row_mask(batch, i) for i in todo]), indices,
                                     [s for per_mask in seeds for s in per_mask], row_organ_maps(batch, todo))
            for k, i in enumerate(todo):
                own = slice(k * self.candidates, (k + 1) * self.candidates)
                blobs[i] = encode_image(result.images[own])
                counts[i] = self.candidates
                seeds_json[i] = json.dumps(seeds[k])
                rows_json[i] = json.dumps(result.denoiser_rows[own].tolist())
        return {"candidates": blobs, "n_candidates": counts, "seeds": seeds_json, "denoiser_rows": rows_json}
