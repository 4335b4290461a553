"""`mrgen bench cost`: what one kept slice costs under each synthesis recipe, and what it is worth downstream.

On the embedded default (its generator, the demo's phantom DB with its 40 unseen target test volumes, LiteMedSAM at
the thresholds the bundle ships, which the demo's calibration wrote), every recipe synthesises the same source masks
(spread over the source training slices). Per recipe:

* generator TFLOP per kept slice: denoiser rows run (the audit counts them per candidate, stopped ones included)
  times the FLOPs of one row, plus one VAE decode per finished candidate and per x̂₀ probe; FLOPs counted with
  ``FlopCounterMode`` (models/flops.py) on the embedded bundle and, for the projection, on the paper-scale
  generator at 512²;
* filter TFLOP per kept slice: filter calls (finished candidates and x̂₀ probes) times one call's FLOPs, for
  LiteMedSAM (the recipe's filter here) and for SAM2-Large at 1024² (the paper's filter at paper scale);
* generator-seconds and filter-seconds per kept slice on this machine (one row's and one call's time, measured here);
* the strict pass rate and the kept slices' mean filter scores;
* downstream Dice: one nnU-Net per recipe (and per segmenter seed), each on an **equal number** of kept slices from
  the same masks (for each mask, its top k kept candidates by filter score, k the fewest any recipe kept for it),
  the same iterations, evaluated on the target test volumes; every recipe against the baseline as a paired bootstrap
  interval over volumes.

Early rejection's cut is calibrated first (when a recipe rejects early): the recipe's sampler, its candidate ceiling
and no stopping (cut 0), on the source *test* masks, so the cut is not fitted on the masks it is judged on. Each
candidate's x̂₀ mean IoU at the probe step is set against whether the finished candidate passed: the false-reject
rate of a cut is the share of the candidates it would stop that would have passed at the end.

A run writes under ``--work`` (default a temp dir) and resumes there: finished syntheses are kept (a recipe whose
settings changed is refused: `mrgen synthesize` pins them), and so are segmenters and evaluations whose training set
is the same (their folders carry its digest).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_DATASET, TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.datasets.schema import decode_organ_map
from mrgen.datasets.store import read_table
from mrgen.jobs.evaluate.segmenter import load_dice_report, submit_evaluation, write_dice_report
from mrgen.jobs.experiment.compare import interval_text, intervals
from mrgen.jobs.experiment.draws import rank_key
from mrgen.jobs.segment.config import SegmentConfig
from mrgen.jobs.segment.train import TrainSource, is_trained, submit_training
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import run_synthesis
from mrgen.jobs.synthesis.stages.writer import read_audit
from mrgen.models import flops as counted
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import EMBEDDED, FILTER_THRESHOLDS, embedded_bundle
from mrgen.models.metrics.bootstrap import paired_difference, seed_average
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.scorers import ScorerSettings, build_scorer
from mrgen.models.selection import KEPT_FATES, STOPPED_EARLY, STRICT_FATES
from mrgen.platform import storage
from mrgen.platform.cluster import RayConfig, init_ray, ray_stopped_after, wait_for
from mrgen.platform.config import ConfigBase, flatten
from mrgen.platform.console import Console, say

# The recipes: SynthesisConfig overrides of the embedded default's synthesis (tiny preset, LiteMedSAM).
DEFAULT_RECIPES = ("R0", "R1", "R1-early", "R2")
RECIPES: dict[str, dict[str, Any]] = {
    # the release's: DDIM 50 at guidance 7 (100 denoiser rows a candidate), 20 candidates a mask, its own rule
    "R0": {"sampler": "ddim", "steps": 50, "guidance": 7.0, "candidates": 20, "keep": 2, "rule": "official"},
    # the default of `mrgen synthesize` and the demo: DPM-Solver++ 20 at guidance 4, 3 candidates
    "R1": {"sampler": "dpm", "steps": 20, "guidance": 4.0, "candidates": 3, "keep": 2},
    # R1 with early rejection: each candidate's x̂₀ scored at step 5 of 20, those below the calibrated cut stopped
    "R1-early": {"sampler": "dpm", "steps": 20, "guidance": 4.0, "candidates": 3, "keep": 2, "adaptive": True,
                 "wave_size": 3, "early_reject_at": 0.25, "early_reject_below": 0.0},
    # the cheap one (`mrgen synthesize --config cheap`): DPM-Solver++ 4 with guidance on the first half of the steps
    # only (6 denoiser rows a candidate), 3 candidates, the candidates of 4 masks packed in one batch. Chosen by a
    # sweep on 16 masks (docs/results.md 2026-12-07): 4 steps passed the filter as often as 20, 6-10 steps and UniPC
    # did not do better
    "R2": {"sampler": "dpm", "steps": 4, "guidance": 4.0, "guidance_interval": [0.0, 0.5], "candidates": 3, "keep": 2,
           "generator": {"batch_size": 4}},
}
BASELINE = "R0"
# H200, paper scale (512², DDIM 50, CFG 7, bf16): 2.27 candidates/s at 111.2 TFLOP a candidate (docs/results.md,
# 2026-12-04): the rate at which the GPU-hours per million kept slices are projected
H200_TFLOPS_ACHIEVED = 2.27 * 111.2


def recipe_settings(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose from {sorted(RECIPES)}")
    return {**RECIPES[name], **(overrides or {})}


def cost_bench_configs(masks: int = 48, recipes: tuple[str, ...] = DEFAULT_RECIPES, baseline: str = BASELINE,
                       recipe_overrides: dict[str, dict[str, Any]] | None = None, probe_masks: int = 16,
                       probe_candidates: int = 8, segment_epochs: int = 5, segmenter_seeds: int = 2, seed: int = 0,
                       db: str | None = None, work: str = "<temp dir>", **_: Any) -> dict[str, ConfigBase]:
    """What :func:`run_cost_bench` builds, by name, without building anything: ``phantom`` (without ``db``),
    ``synthesis.<recipe>``, ``probe.<recipe>`` for a recipe that rejects early, and ``segment``."""
    if baseline not in recipes:
        raise ValueError(f"baseline {baseline!r} is not among the recipes {list(recipes)}")
    unknown = sorted(set(recipe_overrides or {}) - set(recipes))
    if unknown:
        raise ValueError(f"recipe_overrides: {unknown} are not among the recipes {list(recipes)}")
    configs: dict[str, ConfigBase] = {} if db else {"phantom": PhantomConfig.load("default")}
    db = db or f"{work}/db"
    common = {"model": EMBEDDED, "source": db, "target_modalities": [TARGET_MODALITY],
              "source_datasets": [SOURCE_DATASET], "filter": "medsam", "mask_selection": "spread",
              "thresholds_file": f"{work}/{FILTER_THRESHOLDS}", "seed": seed, "contact_sheet_masks": 0,
              # two actors a stage: the filter is the slow one, and the adaptive stage holds generator and filter
              "filter_stage": {"pool_min": 1, "pool_max": 2}, "generator": {"pool_min": 1, "pool_max": 2}}
    for name in recipes:
        settings = recipe_settings(name, (recipe_overrides or {}).get(name))
        configs[f"synthesis.{name}"] = SynthesisConfig.from_preset("tiny").with_overrides({
            **flatten(common), **flatten(settings), "out": f"{work}/{name}", "source_splits": ["train"],
            "max_masks": masks})
        if settings.get("early_reject_at") is not None:
            # the recipe's own sampler and ceiling, nothing stopped, on masks the recipe is not judged on
            configs[f"probe.{name}"] = SynthesisConfig.from_preset("tiny").with_overrides({
                **flatten(common), **flatten(settings), "out": f"{work}/probe-{name}", "source_splits": ["test"],
                "max_masks": probe_masks, "early_reject_below": 0.0, "candidates": probe_candidates,
                "keep": min(settings["keep"], probe_candidates), "wave_size": probe_candidates})
    configs["segment"] = SegmentConfig.from_preset("default").with_overrides(flatten({
        "epochs": segment_epochs, "num_cpus": round(2 / max(2, len(recipes) * segmenter_seeds), 3)}))
    return configs


# ---------------------------------------------------------------- early rejection's cut

def cut_table(probe_audit: list[dict[str, Any]], cuts: tuple[float, ...] = tuple(i / 20 for i in range(1, 16))
              ) -> list[dict[str, Any]]:
    """For each cut: the share of probed candidates it stops, its false-reject rate (stopped ones that passed at the
    end) and the share of all passing candidates it loses."""
    rows = [r for r in probe_audit if r.get("early_mean_iou") is not None and r["fate"] != STOPPED_EARLY]
    passed = [r["fate"] in STRICT_FATES for r in rows]
    table = []
    for cut in cuts:
        stopped = [p for r, p in zip(rows, passed) if r["early_mean_iou"] < cut]
        table.append({"cut": cut, "probed": len(rows), "stopped_share": len(stopped) / len(rows) if rows else None,
                      "false_reject_rate": sum(stopped) / len(stopped) if stopped else 0.0,
                      "passes_lost": sum(stopped) / sum(passed) if any(passed) else 0.0})
    return table


def choose_cut(table: list[dict[str, Any]], max_passes_lost: float) -> dict[str, Any]:
    """The highest cut that stops at most ``max_passes_lost`` of the candidates that would have passed (a share
    that only grows with the cut, where the false-reject rate of a few stopped candidates jumps about); cut 0,
    nothing stopped, when even the lowest loses more."""
    chosen = {"cut": 0.0, "false_reject_rate": 0.0, "stopped_share": 0.0, "passes_lost": 0.0}
    for row in sorted(table, key=lambda r: r["cut"]):
        if row["passes_lost"] > max_passes_lost:
            break
        chosen = row
    return chosen


# ---------------------------------------------------------------- equal-count training sets

def equal_count_sets(kept: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Recipe → slice ids: for each mask every recipe kept something of, its top k kept candidates by filter score
    (mean IoU, then mean confidence, then the lower index), k the fewest any recipe kept for that mask.
    ``kept``: recipe → its synthetic DB's rows (mask_key, candidate_index, slice_id, mean_iou, mean_conf)."""
    by_mask = {name: defaultdict(list) for name in kept}
    for name, rows in kept.items():
        for row in rows:
            by_mask[name][row["mask_key"]].append(row)
    shared = set.intersection(*(set(masks) for masks in by_mask.values())) if by_mask else set()
    sets: dict[str, list[str]] = {name: [] for name in kept}
    for mask in sorted(shared):
        k = min(len(by_mask[name][mask]) for name in kept)
        for name in kept:
            sets[name] += [r["slice_id"] for r in sorted(by_mask[name][mask], key=rank_key)[:k]]
    return sets


# ---------------------------------------------------------------- cost

def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def run_cost(audit: list[dict[str, Any]], flops: dict[str, float], seconds: dict[str, float]) -> dict[str, Any]:
    """One recipe's cost per kept slice from its audit rows (denoiser_rows and early_mean_iou per candidate)."""
    scored = [r for r in audit if r["fate"] != "skipped"]
    kept = [r for r in scored if r["fate"] in KEPT_FATES]
    rows = sum(int(r.get("denoiser_rows") or 0) for r in scored)
    finished = sum(r["fate"] != STOPPED_EARLY for r in scored)
    probes = sum(r.get("early_mean_iou") is not None for r in scored)
    decodes, filter_calls = finished + probes, finished + probes
    organs = _mean([len(json.loads(r["organ_scores"])) for r in scored]) or 1.0
    n = len(kept)
    if not n:
        return {"kept": 0}

    def per_kept(x: float) -> float:
        return x / n

    return {
        "masks": len({r["mask_key"] for r in audit}), "kept": n, "candidates_finished": finished,
        "candidates_stopped_early": len(scored) - finished, "denoiser_rows": rows,
        "denoiser_rows_per_kept": per_kept(rows), "candidates_per_kept": per_kept(finished),
        "strict_pass_rate": sum(r["fate"] in STRICT_FATES for r in scored) / finished if finished
        else None,
        "kept_mean_iou": _mean([r["mean_iou"] for r in kept]), "kept_mean_conf": _mean([r["mean_conf"] for r in kept]),
        "generator_tflop_per_kept": per_kept(rows * flops["row"] + decodes * flops["decode"]) / 1e12,
        "filter_tflop_per_kept": per_kept(filter_calls * (flops["filter_embed"] + organs * flops["filter_decode"]))
        / 1e12,
        "paper": {"generator_tflop_per_kept": per_kept(rows * flops["paper_row"] + decodes * flops["paper_decode"])
                  / 1e12,
                  "filter_tflop_per_kept": per_kept(filter_calls * (flops["sam2_large_embed"]
                                                                    + organs * flops["sam2_large_decode"])) / 1e12},
        "generator_s_per_kept": per_kept(rows * seconds["row"] + decodes * seconds["decode"]),
        "filter_s_per_kept": per_kept(filter_calls * seconds["filter_call"]),
    }


def gpu_hours_per_million(paper: dict[str, float], tflops: float = H200_TFLOPS_ACHIEVED) -> float:
    """Paper-scale generator and filter TFLOP per kept slice, as GPU-hours per million kept slices at ``tflops``."""
    return (paper["generator_tflop_per_kept"] + paper["filter_tflop_per_kept"]) * 1e6 / tflops / 3600


def unit_costs(db: str) -> tuple[dict[str, float], dict[str, float]]:
    """(FLOPs, seconds) of one denoiser row, one decode and one filter call: FLOPs counted on the embedded bundle,
    LiteMedSAM, the paper-scale generator and SAM2-Large; seconds timed here on one thread, as a synthesis actor
    runs, on a real source mask."""
    bundle = ModelBundle.load(embedded_bundle())
    scorer = build_scorer("medsam", ScorerSettings())
    filter_flops, paper = counted.scorer_flops(scorer, organs=1), counted.paper_scale_flops(organs=1)
    flops = {"row": counted.denoiser_flops(bundle), "decode": counted.decode_flops(bundle),
             "filter_embed": filter_flops["embed"], "filter_decode": filter_flops["decode_per_organ"],
             "paper_row": paper["denoiser_row"], "paper_decode": paper["decode"],
             "sam2_large_embed": paper["filter_embed"], "sam2_large_decode": paper["filter_decode_per_organ"]}

    row = read_table(db, ["mask", "organ_map", "organs", "height", "width"], has_mask=True,
                     dataset=[SOURCE_DATASET]).slice(0, 1).to_pylist()[0]
    mask = np.frombuffer(row["mask"], np.uint8).reshape(row["height"], row["width"])
    organ_map = decode_organ_map(row["organ_map"])
    pipe, n = MRGenPipeline(bundle), 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def timed(steps: int) -> tuple[float, np.ndarray]:
            start = time.perf_counter()
            images = pipe.generate([TARGET_MODALITY], mask[None], n, steps=steps, guidance=4.0, sampler="dpm",
                                   seeds=list(range(n)), organ_maps=[organ_map])
            return time.perf_counter() - start, images

        timed(2)  # warm-up
        short, _ = timed(2)
        long, images = timed(10)
        per_row = (long - short) / (n * 2 * 8)
        start = time.perf_counter()
        scorer.score(images, mask, organ_map, list(row["organs"]) or None)
        filter_call = (time.perf_counter() - start) / n
    finally:
        torch.set_num_threads(threads)
    seconds = {"row": per_row, "decode": max(0.0, short / n - 2 * 2 * per_row), "filter_call": filter_call}
    return flops, seconds


# ---------------------------------------------------------------- the run

def _say(text: str) -> None:
    say(f"[cost] {text}")


def _synthesize(config: SynthesisConfig, what: str) -> tuple[list[dict[str, Any]], float]:
    """(audit rows, wall seconds of this call) of one synthesis run, resumed where it stopped."""
    start = time.perf_counter()
    report = run_synthesis(config)
    seconds = time.perf_counter() - start
    totals = report["totals"]
    _say(f"{what}: {totals['candidates_kept']} kept of {totals['candidates_generated']} candidates finished "
         f"({totals.get('candidates_stopped_early', 0)} stopped early) in {seconds:.0f} s")
    return read_audit(config.out).to_pylist(), seconds


def _segment_and_evaluate(configs: dict[str, ConfigBase], sets: dict[str, list[str]], synthetic: dict[str, str],
                          db: str, work: str, seeds: int) -> dict[str, Any]:
    """Recipe → per-volume Dice on the target test volumes (averaged over segmenter seeds)."""
    # a run's name carries a digest of its training set: a rerun with other recipes or masks draws other sets and
    # must not reuse a segmenter trained on the old ones
    digest = {name: hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8] for name, ids in sets.items()}
    runs = {f"{name}-s{s}-{digest[name]}": (name, s) for name in sets for s in range(seeds)}
    model = {run: storage.join(work, "segmenters", run) for run in runs}
    todo = {run: submit_training(configs["segment"].with_overrides({"seed": s}),
                                 [TrainSource(synthetic[name], split=None, slice_ids=tuple(sets[name]),
                                              label="equal count, top k by filter score")], model[run])
            for run, (name, s) in runs.items() if not is_trained(model[run])}
    if todo:
        _say(f"training {len(todo)} segmenters ({configs['segment'].epochs} x {configs['segment'].iterations} "
             "iterations each), side by side")
        wait_for(todo, "segmenters")
    reports = {}
    for run in runs:
        uri = storage.join(work, "eval", f"{run}.json")
        if not storage.exists(uri):
            report = wait_for({run: submit_evaluation(configs["segment"], model[run], db, split="test",
                                                      datasets=[TARGET_DATASET])}, "evaluation")[run]
            write_dice_report(report, uri)
        reports[run] = load_dice_report(uri)
    return {name: seed_average([reports[run]["dice"]["per_volume"] for run, (n, _) in runs.items() if n == name])
            for name in sets}


def run_cost_bench(masks: int = 48, recipes: tuple[str, ...] = DEFAULT_RECIPES, baseline: str = BASELINE,
                   recipe_overrides: dict[str, dict[str, Any]] | None = None, probe_masks: int = 16,
                   probe_candidates: int = 8, max_passes_lost: float = 0.1, segment_epochs: int = 5,
                   segmenter_seeds: int = 2, seed: int = 0, db: str | None = None, out: str | None = None
                   ) -> dict[str, Any]:
    """Run (or resume, in ``out``) the benchmark; the console shows its steps and the table, everything the jobs
    print goes to ``out``/logs/cost.log."""
    work = storage.absolute(out or tempfile.mkdtemp(prefix="mrgen-cost-bench-"))
    configs = cost_bench_configs(masks, tuple(recipes), baseline, recipe_overrides, probe_masks, probe_candidates,
                                 segment_epochs, segmenter_seeds, seed, db, work)  # fails before anything runs
    log = os.path.join(storage.local_path(work), "logs", "cost.log") if storage.is_local(work) else None
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with Console(log) as console, ray_stopped_after():
        if log:
            console.line(f"mrgen bench cost → {work} (logs: {log})")
        return _run(configs, work, db, recipes, baseline, recipe_overrides, probe_masks, max_passes_lost,
                    segmenter_seeds, masks)


def _run(configs: dict[str, ConfigBase], work: str, db: str | None, recipes, baseline: str, recipe_overrides,
         probe_masks: int, max_passes_lost: float, segmenter_seeds: int, masks: int) -> dict[str, Any]:
    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512, no_progress_timeout_s=900))
    if db is None:
        db = f"{work}/db"
        if not storage.exists(storage.join(db, "index.json")):
            build_phantom_db(db, configs["phantom"])
    storage.write_bytes(f"{work}/{FILTER_THRESHOLDS}",
                        storage.read_bytes(storage.join(embedded_bundle(), FILTER_THRESHOLDS)))
    figures: dict[str, Any] = {"masks": masks, "recipes": {}, "baseline": baseline, "work": work,
                               "thresholds": json.loads(storage.read_text(f"{work}/{FILTER_THRESHOLDS}"))["thresholds"]}

    for name in recipes:
        if f"probe.{name}" in configs:
            probe, _ = _synthesize(configs[f"probe.{name}"], f"{name} probe (nothing stopped, source test masks)")
            table = cut_table(probe)
            chosen = choose_cut(table, max_passes_lost)
            figures.setdefault("early_rejection", {})[name] = {"probe_masks": probe_masks, "table": table,
                                                                "chosen": chosen, "max_passes_lost": max_passes_lost}
            _say(f"{name}: cut {chosen['cut']:.2f} on x̂₀ mean IoU stops {chosen['stopped_share']:.0%} of candidates "
                 f"at a false-reject rate of {chosen['false_reject_rate']:.0%} ({chosen['passes_lost']:.0%} of the "
                 "passing ones)")
            configs[f"synthesis.{name}"] = configs[f"synthesis.{name}"].model_copy(
                update={"early_reject_below": chosen["cut"]})

    audits, walls = {}, {}
    for name in recipes:
        audits[name], walls[name] = _synthesize(configs[f"synthesis.{name}"], name)
    flops, seconds = unit_costs(db)
    figures["unit_costs"] = {"flops": flops, "seconds": seconds}
    for name in recipes:
        config = configs[f"synthesis.{name}"]
        figures["recipes"][name] = {"settings": recipe_settings(name, (recipe_overrides or {}).get(name)),
                                    **run_cost(audits[name], flops, seconds), "wall_s": round(walls[name], 1)}
        if config.early_reject_at is not None:
            figures["recipes"][name]["settings"]["early_reject_below"] = config.early_reject_below

    synthetic = {name: configs[f"synthesis.{name}"].out for name in recipes}
    kept = {name: read_table(uri, ["mask_key", "candidate_index", "slice_id", "mean_iou", "mean_conf"]).to_pylist()
            for name, uri in synthetic.items()}
    sets = equal_count_sets(kept)
    n_slices = len(next(iter(sets.values())))
    _say(f"equal count: {n_slices} kept slices per recipe, from the same masks")
    per_volume = _segment_and_evaluate(configs, sets, synthetic, db, work, segmenter_seeds)
    spans = intervals(per_volume)
    organs = sorted({o for pv in per_volume.values() for vol in pv.values() for o in vol})
    for name in recipes:
        entry = figures["recipes"][name]
        entry["dice"] = spans[name]["mean"]
        entry["dice_minus_baseline"] = paired_difference(per_volume[name], per_volume[baseline], organs)
    figures["equal_count_slices"] = n_slices
    figures["ratios"] = _ratios(figures["recipes"], baseline)
    figures["pareto"] = pareto(figures["recipes"])
    for name, entry in figures["recipes"].items():
        entry["gpu_hours_per_million_kept"] = gpu_hours_per_million(entry["paper"])
    _say(cost_table(figures, interval_text))
    storage.write_text(storage.join(work, "cost.json"), json.dumps(figures, indent=1, default=str))
    return figures


def _ratios(recipes: dict[str, dict[str, Any]], baseline: str) -> dict[str, dict[str, float]]:
    """``"B / A"``: how many times less generator TFLOP per kept slice A costs than B, for every costlier B."""
    keys = ("generator_tflop_per_kept",)
    out = {}
    for a, fa in recipes.items():
        for b, fb in recipes.items():
            if a != b and fa.get("kept") and fb.get("kept") and fb[keys[0]] > fa[keys[0]]:
                out[f"{b} / {a}"] = {k: fb[k] / fa[k] for k in keys}
    return out


def pareto(recipes: dict[str, dict[str, Any]]) -> list[str]:
    """Recipes no other beats on both paper-scale generator TFLOP per kept slice (lower) and Dice (higher)."""
    def point(entry: dict[str, Any]) -> tuple[float, float]:
        return entry["paper"]["generator_tflop_per_kept"], entry["dice"]["value"]

    scored = {n: point(e) for n, e in recipes.items() if e.get("kept") and e.get("dice")}
    return sorted(n for n, (cost, dice) in scored.items()
                  if not any(c <= cost and d >= dice and (c, d) != (cost, dice) for c, d in scored.values()))


def cost_table(figures: dict[str, Any], interval_text) -> str:
    """The Pareto table, one row per recipe."""
    base = figures["baseline"]
    lines = [f"cost per kept slice ({figures['masks']} source masks; Dice of segmenters on "
             f"{figures['equal_count_slices']} kept slices each, 95 % intervals over test volumes)",
             "| recipe | rows/kept | gen TFLOP/kept (tiny) | paper gen TFLOP/kept | paper filter TFLOP/kept (SAM2-L) "
             f"| gen s/kept | filter s/kept | pass rate | kept mean IoU | Dice | Dice − {base} | GPU-h per 1M kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in figures["recipes"].items():
        if not e.get("kept"):
            lines.append(f"| {name} | nothing kept |")
            continue
        mark = " *" if name in figures["pareto"] else ""
        lines.append(
            f"| {name}{mark} | {e['denoiser_rows_per_kept']:.0f} | {e['generator_tflop_per_kept']:.4f} | "
            f"{e['paper']['generator_tflop_per_kept']:.1f} | {e['paper']['filter_tflop_per_kept']:.1f} | "
            f"{e['generator_s_per_kept']:.2f} | {e['filter_s_per_kept']:.2f} | {e['strict_pass_rate']:.0%} | "
            f"{e['kept_mean_iou']:.3f} | {interval_text(e['dice'])} | "
            f"{interval_text(e['dice_minus_baseline'], signed=True)} | {e['gpu_hours_per_million_kept']:.0f} |")
    lines.append("(* on the Pareto front of paper-scale generator TFLOP per kept slice against Dice)")
    for key, ratio in figures["ratios"].items():
        lines.append(f"{key}: {ratio['generator_tflop_per_kept']:.1f}x generator TFLOP per kept slice")
    return "\n".join(lines)
