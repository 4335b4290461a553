"""`mrgen bench adaptive`: what the adaptive budget saves with a real scorer.

The same masks and seeds are synthesised twice with the embedded trained generator and LiteMedSAM (thresholds
calibrated on the DB's real source slices): once generating every candidate, once in waves that stop a mask as soon
as ``keep`` candidates pass strictly (``adaptive``). Both runs draw candidate ``i`` of a mask from the same seed, so
the pass rate of what they generate is the same in expectation. Reported per run: candidates generated, kept, strict
pass rate, wall seconds, and generator-seconds per kept sample (candidates generated times the generator's cost per
candidate, timed in this process on one wave).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.datasets.schema import decode_organ_map
from mrgen.datasets.store import read_table
from mrgen.jobs.filter.calibrate import calibrate, write_calibration
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import run_synthesis
from mrgen.jobs.synthesis.stages.generator import CandidateSampler
from mrgen.models.manifest import EMBEDDED, embedded_bundle
from mrgen.models.sampling import SAMPLING_PRESETS
from mrgen.platform.cluster import RayConfig, init_ray
from mrgen.platform.config import ConfigBase


def _generator_seconds_per_candidate(bundle_uri: str, db: str, config) -> float:
    """One wave of candidates for one source mask, sampled in this process as the generator stage samples."""
    row = read_table(db, ["slice_id", "mask", "organ_map", "height", "width"], has_mask=True,
                     dataset=config.source_datasets).slice(0, 1).to_pylist()[0]
    mask = np.frombuffer(row["mask"], np.uint8).reshape(row["height"], row["width"])
    organ_map = decode_organ_map(row["organ_map"])
    gen = CandidateSampler(bundle_uri, config.sampling, config.seed, None, torch_threads=1)
    indices = range(config.wave_size)
    args = ([TARGET_MODALITY], mask[None], indices, gen.seeds(row["slice_id"], TARGET_MODALITY, indices), [organ_map])
    gen.generate(*args)  # warm-up
    start = time.perf_counter()
    gen.generate(*args)
    return (time.perf_counter() - start) / config.wave_size


def adaptive_bench_configs(masks: int = 16, candidates: int = 8, keep: int = 2, wave_size: int = 2,
                           db: str | None = None, work: str = "<temp dir>") -> dict[str, ConfigBase]:
    """What :func:`run_adaptive_bench` builds, by name, without building anything: ``phantom`` (without ``db``) and
    the synthesis runs ``probe`` (the generator's cost per candidate), ``all_candidates`` and ``adaptive``, with the
    embedded generator's sampling and LiteMedSAM at the thresholds calibrated into ``work``/calibration.json."""
    configs: dict[str, ConfigBase] = {} if db else {"phantom": PhantomConfig.load("small")}
    db = db or f"{work}/db"
    # the embedded generator's sampling (a tuple as a YAML list)
    sampling = [f"sampling.{k}={list(v) if isinstance(v, tuple) else v}"
                for k, v in SAMPLING_PRESETS["default"].kwargs().items()]
    for name, adaptive in (("probe", False), ("all_candidates", False), ("adaptive", True)):
        configs[name] = SynthesisConfig.load("tiny", [
            f"model={EMBEDDED}", f"source={db}", f"out={work}/{name}", f"target_modalities=['{TARGET_MODALITY}']",
            f"source_datasets=['{SOURCE_DATASET}']", f"candidates={candidates}", f"keep={keep}", *sampling,
            f"max_masks={masks}", "mask_selection=spread", "filter.kind=medsam",
            f"filter.thresholds_file={work}/calibration.json", f"adaptive={str(adaptive).lower()}",
            f"wave_size={wave_size}", "contact_sheet_masks=0"])
    return configs


def run_adaptive_bench(masks: int = 16, candidates: int = 8, keep: int = 2, wave_size: int = 2,
                       calibration_slices: int = 32, db: str | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mrgen-adaptive-bench-"))
    configs = adaptive_bench_configs(masks, candidates, keep, wave_size, db, work=str(tmp))  # fails before Ray
    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512, no_progress_timeout_s=900))
    if db is None:
        db = str(tmp / "db")
        build_phantom_db(db, configs["phantom"])
    calibration = calibrate(db, "medsam", limit=calibration_slices, dataset=[SOURCE_DATASET], split="train")
    write_calibration(calibration, configs["probe"].filter.thresholds_file)

    figures: dict[str, Any] = {"masks": masks, "candidates": candidates, "keep": keep, "wave_size": wave_size,
                               "thresholds": calibration.thresholds.model_dump()}
    figures["generator_s_per_candidate"] = _generator_seconds_per_candidate(embedded_bundle(), db, configs["probe"])
    for name in ("all_candidates", "adaptive"):
        start = time.perf_counter()
        totals = run_synthesis(configs[name])["totals"]
        seconds = time.perf_counter() - start
        kept = totals["candidates_kept"]
        generated = totals["candidates_generated"]
        figures[name] = {"candidates_generated": generated, "candidates_kept": kept,
                         "strict_pass_rate": totals["strict_pass_rate"], "wall_s": round(seconds, 1),
                         "wall_s_per_kept": seconds / kept if kept else None,
                         "generator_s_per_kept": generated * figures["generator_s_per_candidate"] / kept
                         if kept else None}
    full, adaptive = figures["all_candidates"], figures["adaptive"]
    if full["generator_s_per_kept"] and adaptive["generator_s_per_kept"]:
        figures["ratios"] = {"generator_s_per_kept adaptive / all": adaptive["generator_s_per_kept"]
                             / full["generator_s_per_kept"],
                             "wall_s_per_kept adaptive / all": adaptive["wall_s_per_kept"] / full["wall_s_per_kept"]}
    print(json.dumps(figures, indent=1))
    return figures
