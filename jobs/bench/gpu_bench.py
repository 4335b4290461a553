"""`mrgen bench gpu` (and `infra/gpu-check.sh`): the figures a lent GPU machine should produce, as one JSON.

1. ``tiny_stages``: the tiny preset's three training stages (autoencoder, UNet, controller) as bare loops on the
   device for a few hundred steps, steps/s against the same loops on the CPU;
2. ``paper_training``: `mrgen train all --config paper` for a few steps per stage on one GPU (bf16, DeepSpeed
   ZeRO-2, NCCL): samples/s and peak GPU memory of each stage;
3. ``synthesis``: the paper-scale generator (512², DDIM 50, CFG 7, 20 candidates, bf16): candidates/s, and the
   physical limit: the GPU's peak bf16 rate over the FLOPs of one candidate (counted with
   ``torch.utils.flop_counter.FlopCounterMode`` on one controller + UNet forward and one decode, ``models/flops.py``);
4. ``endpoint``: the service at paper scale (`mrgen bench serve`'s batching on vs off): requests/s and p99;
5. ``generator_efficiency``: the synthesis section's generator and request run one way at a time (fp16 against
   bf16, channels_last, ``torch.compile``, CUDA graphs, batch sizes; ``models/acceleration.py``): candidates/s, its
   share of the FLOP bound and of the measured matmul rate, peak memory, and the best; then ``pipeline_on_one_gpu``:
   `mrgen synthesize` at paper scale with the generator and a SAM2-Large-sized filter on one GPU (half each), against
   the generator alone.

Paper-scale weights are random (the networks' cost does not depend on their values); the text tower is a random
open_clip transformer of BiomedCLIP's width 768 (no hub here), which runs once per prompt. ``tiny=True`` runs every
section at the tiny preset for a few steps (the autoencoder stage alone for training), on the CPU in CI, so that
this check cannot rot.
"""
from __future__ import annotations

import gc
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch._dynamo.utils import counters

from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.datasets.store import read_table
from mrgen.jobs.bench.config import GPU_SECTIONS
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import run_synthesis
from mrgen.jobs.synthesis.stages.writer import AUDIT_DIR
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import STAGE_COLUMNS, decode
from mrgen.jobs.train.run import run_training
from mrgen.jobs.train.stages import build_task
from mrgen.models.acceleration import CUDA_GRAPH_MODES, accelerate
from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.configs import model_config
from mrgen.models.flops import decode_flops, denoiser_flops
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.sampling import PAPER_SAMPLING, SamplingSettings
from mrgen.platform.cluster import init_ray

STAGES = ("vae", "unet", "controlnet")
# dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets, no sparsity); the first name the device's contains wins
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "GH200": 989.4, "B200": 2250.0,
                    "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2}
# BiomedCLIP's token width, random weights: the frozen text tower costs one forward per prompt
PAPER_TEXT_ENCODER = {"pretrained": "", "seed": 0, "model_cfg": {
    "embed_dim": 768, "custom_text": True,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 2}}}


def peak_bf16_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """The dense matmul rate this device reaches (an attainable peak beside the data sheet's)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rows(db: str, n: int) -> dict[str, Any]:
    """``n`` decoded training rows with masks (what every stage's loss takes), read without Ray."""
    table = read_table(db, columns=STAGE_COLUMNS["controlnet"], has_mask=True).slice(0, n)
    return decode({c: np.array(table.column(c).to_pylist() + [None], dtype=object)[:-1] for c in table.column_names})


def stage_steps_per_s(stage: str, bundle, batch: dict[str, Any], device: torch.device, steps: int) -> float:
    """A bare AdamW loop of ``stage`` (the training job's task and loss) on ``device``: optimizer steps/s."""
    task = build_task(stage, model_config("tiny"), bundle, 1e-6, 0.0, 0.1, seed=0)
    task.to(device, torch.float32)
    model = task.trainable.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = task.loss(model, batch, device, torch.float32)
        loss = loss[0] if isinstance(loss, tuple) else loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up (kernels, allocator)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def tiny_stages(db: str, device: torch.device, steps: int, cpu_steps: int, batch_size: int = 8) -> dict[str, Any]:
    batch = _rows(db, batch_size)
    runs = {device.type: (device, steps)}
    if device.type != "cpu":
        runs["cpu"] = (torch.device("cpu"), cpu_steps)
    rates: dict[str, dict[str, float]] = {}
    for kind, (where, n) in runs.items():
        bundle = build_random_bundle("tiny")  # frozen parts of the UNet and controller stages, moved to ``where``
        rates[kind] = {stage: stage_steps_per_s(stage, bundle, batch, where, n) for stage in STAGES}
    out: dict[str, Any] = {"batch_size": batch_size, "steps": steps, "cpu_steps": cpu_steps if "cpu" in runs else steps}
    for stage in STAGES:
        rate, cpu = rates[device.type][stage], rates["cpu"][stage]
        out[stage] = {"steps_per_s": round(rate, 2), "cpu_steps_per_s": round(cpu, 2),
                      "speedup_vs_cpu": round(rate / cpu, 2)}
    return out


def paper_training_config(device: torch.device, tiny: bool, steps: int, batch_sizes: dict[str, int],
                          stages: tuple[str, ...] = STAGES) -> TrainConfig:
    """The config :func:`paper_training` trains ``stages`` with: the paper (or tiny) preset on one worker, ``steps``
    steps per stage after 1 warm-up step, bf16 on a GPU; the paper bundle's text tower is :data:`PAPER_TEXT_ENCODER`."""
    gpu = device.type == "cuda"
    sets = ["num_workers=1", f"gpus_per_worker={int(gpu)}", f"precision={'bf16' if gpu else 'fp32'}", "zero_stage=2",
            f"checkpoint_every={steps}", "keep_checkpoints=2", "sample_every=0", f"log_every={max(1, steps // 4)}",
            "scaling_samples=8", "cache_data=false", "max_failures=0", *(["cpus_per_worker=1"] if not gpu else []),
            *(f"{s}.{k}" for s in stages for k in (f"max_steps={steps}", "warmup_steps=1")),
            *(f"{s}.batch_size={b}" for s, b in batch_sizes.items())]
    config = TrainConfig.load("tiny" if tiny else "paper", sets)
    if not tiny:
        config = config.with_overrides({"architecture": {"text_encoder": PAPER_TEXT_ENCODER}})
    return config


def paper_training(db: str, out: str, device: torch.device, tiny: bool, steps: int, batch_sizes: dict[str, int],
                   stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """`mrgen train all`'s ``stages`` in order (each from the previous one's bundle) for ``steps`` steps each."""
    gpu = device.type == "cuda"
    config = paper_training_config(device, tiny, steps, batch_sizes, stages)
    figures: dict[str, Any] = {"config": "tiny" if tiny else "paper", "precision": config.resolved_precision(),
                               "zero_stage": config.zero_stage, "backend": "nccl" if gpu else "gloo"}
    for stage in stages:
        result = run_training(config, db, out, stage)
        steady = result.history[1:] or result.history  # the first interval holds start-up
        peaks = [h.get("peak_memory_mib") for h in result.history if h.get("peak_memory_mib") is not None]
        figures[stage] = {"steps": result.steps, "batch_size": config.stage(stage).batch_size,
                          "samples_per_s": round(float(np.median([h["samples_per_s"] for h in steady])), 2),
                          "peak_memory_gib": round(max(peaks) / 1024, 2) if peaks else None,
                          "wall_s": round(result.seconds, 1)}
    return figures


def flops_per_candidate(bundle, size: int, steps: int, guidance: float) -> dict[str, float]:
    """FLOPs of one candidate: ``steps`` × (2 with CFG) controller + UNet forwards at batch 1, plus one decode
    (counted on shape-only copies of the bundle's models, ``models/flops.py``)."""
    step, decode = denoiser_flops(bundle, size), decode_flops(bundle, size)
    passes = 2 if guidance != 1.0 else 1
    total = steps * passes * step + decode
    return {"gflop_per_denoiser_forward": round(step / 1e9, 2),
            "gflop_decode": round(decode / 1e9, 2),
            "tflop_per_candidate": round(total / 1e12, 4)}


PROMPT = "T2 SPIR MRI, abdomen"  # the synthesis and generator_efficiency sections' request: one liver mask


def _request_mask(size: int, masks: int = 1) -> np.ndarray:
    mask = np.zeros((masks, size, size), np.uint8)
    mask[:, size // 4: size // 2, size // 4: 3 * size // 4] = 1
    return mask


def synthesis(bundle, device: torch.device, size: int, candidates: int, sampling: SamplingSettings) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = MRGenPipeline(bundle.to(device, dtype), device=device)
    mask = _request_mask(size)

    def run(n_steps: int) -> float:
        _sync(device)
        start = time.perf_counter()
        pipe.generate([PROMPT], mask, candidates, **replace(sampling, steps=n_steps).kwargs(),
                      seeds=list(range(candidates)), organ_maps={1: "liver"})
        _sync(device)
        return time.perf_counter() - start

    run(2)  # warm-up
    seconds = run(sampling.steps)
    rate = candidates / seconds
    flops = flops_per_candidate(pipe.bundle, size, sampling.steps, sampling.guidance)
    peak = peak_bf16_tflops(device)
    matmul = measured_matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 512)
    limit = peak * 1e12 / (flops["tflop_per_candidate"] * 1e12) if peak else None
    attainable = matmul / flops["tflop_per_candidate"]
    return {"resolution": size, "sampler": f"{sampling.sampler} {sampling.steps}", "guidance": sampling.guidance,
            "candidates": candidates,
            "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 2),
            "candidates_per_s": round(rate, 4), **flops, "device_name": _device_name(device),
            "peak_bf16_tflops": peak, "physical_limit_candidates_per_s": round(limit, 3) if limit else None,
            "fraction_of_physical_limit": round(rate / limit, 4) if limit else None,
            "measured_matmul_tflops": round(matmul, 2),
            "candidates_per_s_at_measured_matmul_rate": round(attainable, 3)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def endpoint_options(tiny: bool) -> dict[str, Any]:
    """The keyword arguments (but ``model``) the ``endpoint`` section gives ``serving.loadgen.benchmark`` (the CLI
    calls it: jobs do not reach serving)."""
    if tiny:
        return {"clients": 2, "duration_s": 1.0, "steps": 2, "warmup_s": 0.5, "rounds": 2}
    # one GPU replica, no SAM2 filter (no checkpoint here): the generator's batching is what is measured
    return {"clients": 8, "duration_s": 20.0, "steps": 50, "warmup_s": 5.0, "config": "paper", "size": 512,
            "overrides": {"filter.kind": "none", "limits.max_image_size": 512}}


@dataclass(frozen=True)
class Variant:
    """One way of running the generator in the ``generator_efficiency`` section: ``models/acceleration.py``'s
    settings and the request's batching."""

    dtype: str = "bfloat16"
    channels_last: bool = False
    compile_mode: str | None = None  # torch.compile mode of UNet and controller (None: eager)
    batch_size: int | None = None    # images per sampling batch (None: every image of the request at once)
    masks: int = 1                   # masks in the request, each with the section's candidates

    def settings(self, candidates: int) -> dict[str, Any]:
        return {**asdict(self), "batch_size": self.batch_size or self.masks * candidates}


BASELINE = "eager"  # today's path: the synthesis section's (bf16 on CUDA, float32 on the CPU), eager, one batch


def efficiency_variants(device: str | torch.device, tiny: bool, candidates: int,
                        autotune: bool = True) -> dict[str, Variant]:
    """The ``generator_efficiency`` section's variants, each one change from :data:`BASELINE`: ``fp16``,
    ``channels_last``, ``batch_N`` (N images per sampling batch: one mask's ``candidates`` split, or as many masks
    as N holds), ``compile`` (torch.compile without CUDA graphs: ``max-autotune-no-cudagraphs``, kernels tuned per
    shape; ``default`` without ``autotune`` and in the tiny mode) and ``cuda_graphs`` (the same replayed as CUDA
    graphs: ``max-autotune``, reusing what ``compile`` tuned; ``reduce-overhead`` without ``autotune``)."""
    base = Variant(dtype="bfloat16" if torch.device(device).type == "cuda" else "float32")
    variants = {BASELINE: base, "fp16": replace(base, dtype="float16"),
                "channels_last": replace(base, channels_last=True)}
    for size in (1, 4) if tiny else (10, 40):
        variants[f"batch_{size}"] = replace(base, batch_size=size, masks=max(1, size // candidates))
    tuned = autotune and not tiny
    variants["compile"] = replace(base, compile_mode="max-autotune-no-cudagraphs" if tuned else "default")
    variants["cuda_graphs"] = replace(base, compile_mode="max-autotune" if tuned else "reduce-overhead")
    return variants


def _skip_reason(variant: Variant, device: torch.device) -> str | None:
    if variant.compile_mode in CUDA_GRAPH_MODES and device.type != "cuda":
        return "CUDA only"
    if variant.compile_mode and device.type == "cpu":
        # inductor's C++ build of the tiny UNet and controller: a 374 s warm-up on the 2-core CI machine (loaded)
        return "on the CPU (CI's tiny mode) compiling takes minutes; measured on CUDA"
    return None


def run_variant(base, variant: Variant, device: torch.device, size: int, candidates: int,
                sampling: SamplingSettings) -> dict[str, Any]:
    """``variant`` of the generator (``base`` copied to ``device`` and set up by ``models/acceleration.py``) on the
    request ``variant.masks`` × ``candidates`` at ``size``: a short call first (2 steps on CUDA, 1 on the CPU:
    kernels, compilation, CUDA graph recording: ``warmup_s``), then the timed call; candidates/s, peak GPU memory
    and, compiled, dynamo's graph breaks and inductor's CUDA-graph skips."""
    counters.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pipe = MRGenPipeline(accelerate(base, device=device, dtype=variant.dtype, channels_last=variant.channels_last,
                                    compile_mode=variant.compile_mode))
    setup = time.perf_counter() - start
    n = variant.masks * candidates
    masks = _request_mask(size, variant.masks)

    def run(n_steps: int) -> float:
        _sync(device)
        begin = time.perf_counter()
        pipe.generate([PROMPT] * variant.masks, masks, candidates, **replace(sampling, steps=n_steps).kwargs(),
                      seeds=list(range(n)), batch_size=variant.batch_size, organ_maps={1: "liver"})
        _sync(device)
        return time.perf_counter() - begin

    warmup = run(2 if device.type == "cuda" else 1)  # CUDA graphs: warmed up at the first call, recorded at the 2nd
    seconds = run(sampling.steps)
    out = {"candidates": n, "setup_s": round(setup, 2), "warmup_s": round(warmup, 2), "seconds": round(seconds, 2),
           "candidates_per_s": round(n / seconds, 4),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
           if device.type == "cuda" else None}
    if variant.compile_mode:
        out["graph_breaks"] = sum(counters["graph_break"].values())
        out["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
    return out


def _release(device: torch.device) -> None:
    """Frees what a variant left: compiled graphs and CUDA-graph pools, cached GPU memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _best(variants: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The measured variant of the highest candidates/s, with its settings (None before any is measured)."""
    measured = {k: v for k, v in variants.items() if v.get("candidates_per_s")}
    if not measured:
        return None
    name = max(measured, key=lambda k: measured[k]["candidates_per_s"])
    return {"variant": name, "settings": measured[name]["settings"],
            "candidates_per_s": measured[name]["candidates_per_s"],
            "speedup_vs_baseline": measured[name].get("speedup_vs_baseline")}


def generator_efficiency(bundle_uri: str, device: torch.device, tiny: bool, size: int, candidates: int,
                         sampling: SamplingSettings, autotune: bool = True,
                         pipeline: Callable[[], dict[str, Any]] | None = None,
                         progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Each of :func:`efficiency_variants` on the bundle at ``bundle_uri``, one at a time, each in its own try (a
    failure is recorded, the next runs): candidates/s, its share of the FLOP bound (the device's data-sheet bf16
    peak, as the synthesis section) and of the matmul rate measured in its dtype, peak memory; ``best``; and
    ``pipeline_on_one_gpu`` = ``pipeline()`` (CUDA only). The eager variants run first, then the pipeline, then the
    compiled variants (minutes of compiling); ``progress`` gets the figures so far after each."""
    base = ModelBundle.load(bundle_uri)  # float32 on the CPU: each variant copies what it runs to the device
    flops = flops_per_candidate(base, size, sampling.steps, sampling.guidance)
    tflop = flops["tflop_per_candidate"]
    peak = peak_bf16_tflops(device)
    limit = peak / tflop if peak else None
    plan = efficiency_variants(device, tiny, candidates, autotune)
    matmul: dict[str, float] = {}
    variants: dict[str, dict[str, Any]] = {name: {"settings": v.settings(candidates)} for name, v in plan.items()}
    out: dict[str, Any] = {"resolution": size, "sampler": f"{sampling.sampler} {sampling.steps}",
                           "guidance": sampling.guidance, "candidates_per_mask": candidates, "baseline": BASELINE,
                           **flops, "device_name": _device_name(device), "peak_bf16_tflops": peak,
                           "physical_limit_candidates_per_s": round(limit, 3) if limit else None,
                           "measured_matmul_tflops": {}, "variants": variants, "best": None,
                           "pipeline_on_one_gpu": None}

    def measure(name: str) -> None:
        variant, figures = plan[name], variants[name]
        print(f"[bench gpu] generator_efficiency: {name} ...", flush=True)
        skip = _skip_reason(variant, device)
        if skip:
            figures["skipped"] = skip
            return
        try:
            figures.update(run_variant(base, variant, device, size, candidates, sampling))
            if variant.dtype not in matmul:
                matmul[variant.dtype] = measured_matmul_tflops(device, getattr(torch, variant.dtype),
                                                               8192 if device.type == "cuda" else 512)
                out["measured_matmul_tflops"][variant.dtype] = round(matmul[variant.dtype], 4)
            rate, baseline = figures["candidates_per_s"], variants[BASELINE].get("candidates_per_s")
            figures["fraction_of_physical_limit"] = round(rate / limit, 4) if limit else None
            figures["fraction_of_measured_matmul_rate"] = round(rate * tflop / matmul[variant.dtype], 4)
            figures["speedup_vs_baseline"] = round(rate / baseline, 3) if baseline else None
        except Exception as exc:  # one variant's failure (a compile error, out of memory) must not end the section
            figures["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            _release(device)
        out["best"] = _best(variants)
        if progress:
            progress(out)

    for name in [n for n, v in plan.items() if not v.compile_mode]:  # BASELINE first
        measure(name)
    if device.type != "cuda" or pipeline is None:
        out["pipeline_on_one_gpu"] = {"skipped": "CUDA only"}
    else:
        try:
            out["pipeline_on_one_gpu"] = pipeline()
        except Exception as exc:
            out["pipeline_on_one_gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        if progress:
            progress(out)
    for name in [n for n, v in plan.items() if v.compile_mode]:
        measure(name)
    return out


PIPELINE_FILTERS = ("none", "sam2")  # pipeline_on_one_gpu's runs: the generator alone, then with SAM2
# 30 candidates per run (the generator stage samples in float32: an estimated 0.5-1 candidates/s on an H100)
PIPELINE_PLAN = {"masks": 3, "candidates": 10}


def pipeline_configs(bundle_uri: str, db: str, work: str, masks: int = PIPELINE_PLAN["masks"],
                     candidates: int = PIPELINE_PLAN["candidates"]) -> dict[str, SynthesisConfig]:
    """The two synthesis runs of ``pipeline_on_one_gpu`` (the paper preset; ``pipeline.none``, the generator
    alone, and ``pipeline.sam2``, with SAM2.1-Large at 1024², random weights): one generator actor and one filter
    actor with half the GPU each; one mask per batch and per written part, so each mask's audit part is written
    when that mask is done (what the steady rate is read from)."""
    configs = {}
    for kind in PIPELINE_FILTERS:
        configs[f"pipeline.{kind}"] = SynthesisConfig.load("paper", [
            f"model={bundle_uri}", f"source={db}", f"out={work}/pipeline-{kind}",
            f"target_modalities=['{TARGET_MODALITY}']", f"source_datasets=['{SOURCE_DATASET}']",
            f"max_masks={masks}", "mask_selection=spread", f"candidates={candidates}", f"filter.kind={kind}",
            "filter.scorer.random=true", "filter.scorer.config_name=large", "filter.scorer.image_size=1024",
            "generator.num_gpus=0.5", "generator.pool_max=1", "filter_stage.num_gpus=0.5", "filter_stage.pool_max=1",
            "light.batch_size=1", "output.shard_rows=1", "contact_sheet_masks=0"])
    return configs


def steady_candidates_per_s(out: str) -> float | None:
    """Candidates per second between the first and the last mask a synthesis run finished (its audit parts'
    write times; start-up and the first mask excluded); None with fewer than two parts."""
    parts = sorted(Path(out, AUDIT_DIR).glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 2:
        return None
    later = sum(not reason for p in parts[1:] for reason in pq.read_table(p, columns=["skip_reason"])
                .column(0).to_pylist())
    seconds = parts[-1].stat().st_mtime - parts[0].stat().st_mtime
    return later / seconds if seconds > 0 else None


def pipeline_on_one_gpu(configs: dict[str, SynthesisConfig]) -> dict[str, Any]:
    """`mrgen synthesize` (``run_synthesis``) with each of :func:`pipeline_configs`; candidates/s over the whole
    run and in the steady state, and the ratio with the filter to without (goal >= 0.9)."""
    sam2 = configs["pipeline.sam2"]
    out: dict[str, Any] = {"masks": sam2.max_masks, "candidates_per_mask": sam2.candidates,
                           "sampler": f"{sam2.sampling.sampler} {sam2.sampling.steps}",
                           "guidance": sam2.sampling.guidance, "generator_num_gpus": sam2.generator.num_gpus,
                           "filter": {"kind": "sam2", "config_name": sam2.filter.scorer.config_name,
                                      "image_size": sam2.filter.scorer.image_size, "random": sam2.filter.scorer.random,
                                      "num_gpus": sam2.filter_stage.num_gpus},
                           "generator_dtype": "bfloat16 (models.acceleration.inference_dtype on CUDA)"}
    for label, kind in (("generator_alone", "none"), ("with_sam2", "sam2")):
        config = configs[f"pipeline.{kind}"]
        print(f"[bench gpu] generator_efficiency: pipeline, filter {kind} ...", flush=True)
        start = time.perf_counter()
        report = run_synthesis(config)
        seconds = time.perf_counter() - start
        n = int(report["this_run"]["candidates_generated"])
        steady = steady_candidates_per_s(config.out)
        out[label] = {"candidates": n, "seconds": round(seconds, 1), "candidates_per_s": round(n / seconds, 4),
                      "steady_candidates_per_s": round(steady, 4) if steady else None}
    alone, shared = out["generator_alone"], out["with_sam2"]
    key = "steady_candidates_per_s" if alone["steady_candidates_per_s"] and shared["steady_candidates_per_s"] \
        else "candidates_per_s"
    out["ratio"] = round(shared[key] / alone[key], 3)
    out["ratio_of"] = key
    out["ratio_goal"] = ">= 0.9"
    return out


def _timed(figures: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]],
           on_section: Callable[[dict[str, Any]], None] | None = None) -> None:
    """``figures[name] = fn()`` with its wall seconds; an error is recorded and the next section still runs."""
    start = time.perf_counter()
    print(f"[bench gpu] {name} ...", flush=True)
    try:
        figures[name] = fn()
    except Exception as exc:  # one JSON of everything that worked is the point of a one-shot check
        figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    figures[name]["section_wall_s"] = round(time.perf_counter() - start, 1)
    if on_section:
        on_section(figures)


PAPER_DB = ["volumes=3", "slices_per_volume=16", "test_volumes=1"]  # the paper mode's training DB (paper preset)


def _training_plan(tiny: bool) -> dict[str, Any]:
    """paper_training's steps, batch sizes and stages; tiny: one stage (each is a Ray Train start-up, ~35 s on 2
    cores), the CI test's budget being a minute."""
    if tiny:
        return {"steps": 2, "batch_sizes": {}, "stages": ("vae",)}
    return {"steps": 20, "batch_sizes": {"vae": 8}, "stages": STAGES}


def _synthesis_plan(tiny: bool) -> tuple[int, int, SamplingSettings]:
    """(size, candidates, sampling) of the synthesis section: the paper's DDIM 50 at guidance 7 (3 steps tiny)."""
    return (64, 2, replace(PAPER_SAMPLING, steps=3)) if tiny else (512, 20, PAPER_SAMPLING)


def _bundle_plan(tiny: bool) -> dict[str, Any]:
    """The random bundle of the synthesis and endpoint sections (build_random_bundle's and model_config's args)."""
    return {"name": "tiny"} if tiny else {"name": "paper", "overrides": {"text_encoder": PAPER_TEXT_ENCODER}}


def gpu_bench_configs(device: str = "cuda", tiny: bool = False, sections: tuple[str, ...] | None = None,
                      work: str = "<temp dir>", autotune: bool = True) -> dict[str, Any]:
    """What :func:`run_gpu_bench` builds for ``sections`` (None: all), by name, without building anything or looking
    for the device: ``phantom`` (the tiny DB), ``phantom.paper`` (the paper mode's training DB, also the source of
    the synthesis runs), ``train`` (the training section's config), ``model`` (the random bundle's sizes),
    ``sampling`` (the synthesis and generator_efficiency sections'), ``variants`` (generator_efficiency's) and, on
    CUDA at paper scale, ``pipeline.none`` and ``pipeline.sam2`` (its synthesis runs); ``work`` is the run's folder.
    The endpoint section's service configs are ``serving.loadgen.benchmark_configs(**endpoint_options(tiny))``."""
    wanted = set(sections or GPU_SECTIONS)
    pipeline = "generator_efficiency" in wanted and torch.device(device).type == "cuda" and not tiny
    configs: dict[str, Any] = {}
    if {"tiny_stages", "paper_training"} & wanted:
        configs["phantom"] = PhantomConfig.load("tiny")
    if ("paper_training" in wanted and not tiny) or pipeline:
        configs["phantom.paper"] = PhantomConfig.load("paper", PAPER_DB)
    if "paper_training" in wanted:
        configs["train"] = paper_training_config(torch.device(device), tiny, **_training_plan(tiny))
    if {"synthesis", "endpoint", "generator_efficiency"} & wanted:
        plan = _bundle_plan(tiny)
        configs["model"] = model_config(plan["name"], plan.get("overrides"))
    if {"synthesis", "generator_efficiency"} & wanted:
        configs["sampling"] = _synthesis_plan(tiny)[2]
    if "generator_efficiency" in wanted:
        configs["variants"] = efficiency_variants(device, tiny, _synthesis_plan(tiny)[1], autotune)
    if pipeline:
        configs.update(pipeline_configs(f"{work}/bundle", f"{work}/db-paper", work))
    return configs


def run_gpu_bench(device: str = "cuda", tiny: bool = False, sections: tuple[str, ...] | None = None,
                  workdir: str | None = None, on_section: Callable[[dict[str, Any]], None] | None = None,
                  autotune: bool = True, endpoint: Callable[[str, bool], dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """Every section (or those named in ``sections``) on ``device``; prints and returns one JSON object.
    ``endpoint``: the ``endpoint`` section, (bundle URI, tiny) → its figures (the CLI's, which loads the service with
    ``serving.loadgen``); without it that section is refused.
    ``on_section`` gets the figures so far after each section, and within generator_efficiency after each of its
    runs, the section then marked ``"unfinished": true`` (a lease that ends mid-run keeps what finished).
    ``autotune``: generator_efficiency's compiled variants tune kernels per shape (:func:`efficiency_variants`)."""
    work = Path(workdir or tempfile.mkdtemp(prefix="mrgen-gpu-bench-"))
    configs = gpu_bench_configs(device, tiny, sections, str(work), autotune)  # a bad setting fails before anything
    wanted = sections or GPU_SECTIONS
    if "endpoint" in wanted and endpoint is None:
        raise ValueError("the endpoint section needs the service's load generator (endpoint=; `mrgen bench gpu` "
                         "passes it)")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device here (use --device cpu --tiny for the CI mode)")
    started = time.perf_counter()
    figures: dict[str, Any] = {"device": device, "device_name": _device_name(dev), "tiny": tiny,
                               "torch": torch.__version__, "cuda": torch.version.cuda}
    init_ray()
    tiny_db, paper_db = str(work / "db-tiny"), str(work / "db-paper")
    if {"tiny_stages", "paper_training"} & set(wanted):
        build_phantom_db(tiny_db, configs["phantom"], use_ray=False)
    if "tiny_stages" in wanted:
        steps, cpu_steps = (3, 2) if tiny else (300, 20)
        _timed(figures, "tiny_stages", lambda: tiny_stages(tiny_db, dev, steps, cpu_steps), on_section)
    if "paper_training" in wanted:
        def train() -> dict[str, Any]:
            db = tiny_db
            if not tiny:
                db = paper_db
                build_phantom_db(db, configs["phantom.paper"], use_ray=False)
            return paper_training(db, str(work / "train"), dev, tiny, **_training_plan(tiny))
        _timed(figures, "paper_training", train, on_section)
        shutil.rmtree(work / "train", ignore_errors=True)  # paper checkpoints are tens of GB
    bundle_uri = str(work / "bundle")
    if {"synthesis", "endpoint", "generator_efficiency"} & set(wanted):
        bundle = build_random_bundle(**_bundle_plan(tiny))
        if {"endpoint", "generator_efficiency"} & set(wanted):
            bundle.save(bundle_uri)
        if "synthesis" in wanted:
            size, candidates, sampling = _synthesis_plan(tiny)
            _timed(figures, "synthesis", lambda: synthesis(bundle, dev, size, candidates, sampling), on_section)
        del bundle
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if "endpoint" in wanted:
        _timed(figures, "endpoint", lambda: endpoint(bundle_uri, tiny), on_section)
    if "generator_efficiency" in wanted:
        def pipeline() -> dict[str, Any]:
            build_phantom_db(paper_db, configs["phantom.paper"], use_ray=False)  # paper_training's, when it ran
            return pipeline_on_one_gpu({f"pipeline.{kind}": configs[f"pipeline.{kind}"] for kind in PIPELINE_FILTERS})

        def progress(partial: dict[str, Any]) -> None:
            figures["generator_efficiency"] = {**partial, "unfinished": True}
            if on_section:
                on_section(figures)

        _timed(figures, "generator_efficiency", lambda: generator_efficiency(
            bundle_uri, dev, tiny, *_synthesis_plan(tiny), autotune=autotune,
            pipeline=pipeline if "pipeline.sam2" in configs else None, progress=progress), on_section)
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures, indent=1))
    return figures
