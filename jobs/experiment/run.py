"""The paper's cross-modality experiment (§4, Table 3) in one command, as ordered named steps.

    build-db            phantom MRGen-DB (source modality with masks, target modality masks only on test volumes);
                        its images are renderings of a phantom, called "phantom" (not "real") in every output
    build-oracle-db     (oracle) the same phantom with the target training volumes annotated: the oracle's data
    train-generator     (generator=train) `mrgen train all`: autoencoder → text-guided UNet → mask controller;
                        by default the embedded trained bundle is used and this step does nothing
    check-controller    `mrgen eval mask`: denoising loss with each slice's own mask vs another's (train and test
                        masks), same-seed samples with own and other masks, on the source masks synthesis uses
                        (generator/mask_following.png) and on the target modality's held-out test masks
    calibrate-filter    `mrgen filter calibrate`: the filter's thresholds from the DB's source slices' own scores
    synthesize          target-modality images from the source-modality training masks, with the filter
    synthesize-unfiltered  (unfiltered) every candidate the filtered run scored, unfiltered, and the training sets
                        drawn from them (jobs/experiment/draws.py: the filter at equal count; best / worst by score)
    train-segmenters    nnU-Net on the DB's source slices, on the synthetic slices (filtered and unfiltered at equal
                        count) and, for the oracle, on the DB's target training slices: side by side, under the
                        remaining budget
    evaluate            volumetric Dice of each on the held-out target-modality test volumes; each one's Dice
                        pooled over its own training slices (did it learn what it was given?)
    fid                 FID and KID (Inception) of synthetic-vs-target beside source-vs-target
    report              OUT/report/: report.md, report.json, contact sheets

Each step skips when its output exists, so rerunning the command resumes after the last finished step.
Layout under OUT: db/, oracle-db/, generator/ (trained bundle; mask_dependence.json, mask_following.png),
filter/calibration.json, synthetic/, synthetic-unfiltered/, segmenters/<name>/, eval/<name>.json and
eval/<name>-fit.json, fid.json, report/, logs/experiment.log (everything the jobs printed).
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_DATASET, TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.datasets.store import load_index, read_table
from mrgen.jobs.evaluate.fid import FID_REPORT, SliceSet, fid_beside_source, write_fid_report
from mrgen.jobs.evaluate.mask import (CONTROLLER_CHECK, evaluate_mask_dependence, evaluate_mask_following,
                                      write_controller_check)
from mrgen.jobs.evaluate.segmenter import submit_evaluation, write_dice_report
from mrgen.jobs.experiment.budget import generator_minutes, segmenter_minutes
from mrgen.jobs.experiment.compare import interval_text, intervals
from mrgen.jobs.experiment.config import ExperimentConfig
from mrgen.jobs.experiment.draws import DRAWS_FILE, draw_training_sets, load_draws, write_draws
from mrgen.jobs.experiment.report import synthesis_counts, write_report_folder
from mrgen.jobs.filter.calibrate import calibrate, describe, write_calibration
from mrgen.jobs.segment.config import SegmentConfig
from mrgen.jobs.segment.train import TrainSource, is_trained, submit_training
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import REPORT, run_synthesis
from mrgen.jobs.synthesis.stages.writer import read_audit
from mrgen.jobs.train.config import STAGES, TrainConfig
from mrgen.jobs.train.run import is_finished, run_all
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import resolve_model_uri
from mrgen.platform import storage
from mrgen.platform.budget import TimeBudget
from mrgen.platform.cluster import RayConfig, init_ray, ray_stopped_after, wait_for
from mrgen.platform.config import flatten
from mrgen.platform.console import Console, say


@dataclass
class Experiment:
    """Where everything goes and what the steps found; steps read and add to ``results``."""

    out: str
    config: ExperimentConfig
    ray_address: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    budget: TimeBudget | None = None  # experiment.minutes, counted from the start of this invocation

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    @property
    def db(self) -> str:
        return self.path("db")

    @property
    def oracle_db(self) -> str:
        return self.path("oracle-db")

    @property
    def trains_generator(self) -> bool:
        return self.config.generator == "train"

    @property
    def bundle(self) -> str:
        if self.trains_generator:
            return self.path("generator", "bundle")
        return storage.absolute(resolve_model_uri(self.config.generator))

    @property
    def filtered(self) -> bool:
        return self.config.filter != "none"

    @property
    def calibration(self) -> str | None:
        calibrated = self.config.filter in ("medsam", "sam2") and self.config.calibrate
        return self.path("filter", "calibration.json") if calibrated else None

    @property
    def synthetic(self) -> str:
        return self.path("synthetic")

    @property
    def synthetic_unfiltered(self) -> str:
        return self.path("synthetic-unfiltered")

    @property
    def draws(self) -> str:
        return storage.join(self.synthetic_unfiltered, DRAWS_FILE)

    @property
    def segmenters(self) -> list[str]:
        names = ["source-only", "mrgen"]
        if self.filtered and self.config.unfiltered:
            names.append("mrgen-unfiltered")
            if self.config.score_split:
                names += ["mrgen-best", "mrgen-worst"]
        if self.config.oracle:
            names.append("oracle")
        return names

    @functools.cached_property
    def data_label(self) -> str:
        """What the DB's images are: "phantom" for the embedded phantom's renderings, "real" for data built from
        a user's files."""
        return "phantom" if load_index(self.db).meta.get("generator") == "phantom" else "real"

    @property
    def mask_check(self) -> str:
        return self.path("generator", CONTROLLER_CHECK)

    @property
    def fid_report(self) -> str:
        return self.path(FID_REPORT)

    @property
    def mask_following_sheet(self) -> str:
        return self.path("generator", "mask_following.png")

    def segmenter(self, name: str) -> str:
        return self.path("segmenters", name)

    def evaluation(self, name: str) -> str:
        return self.path("eval", f"{name}.json")

    def fit(self, name: str) -> str:
        return self.path("eval", f"{name}-fit.json")

    def say(self, text: str) -> None:
        say(text)


# ---------------------------------------------------------------- job configs from the experiment's budgets

def phantom_config(exp: Experiment, oracle: bool = False):
    config = PhantomConfig.from_preset(exp.config.phantom).with_overrides(flatten(exp.config.phantom_overrides))
    return config.with_overrides({"target_train_masks": True}) if oracle else config


def train_config(exp: Experiment):
    return TrainConfig.from_preset(exp.config.train).with_overrides(flatten(exp.config.train_overrides))


def synthesis_config(exp: Experiment, unfiltered: bool = False):
    overrides = {"model": exp.bundle, "source": exp.db, "out": exp.synthetic, "target_modalities": [TARGET_MODALITY],
                 "source_datasets": [SOURCE_DATASET], "source_splits": [exp.config.source_split],
                 "filter.kind": "sam2" if exp.config.filter == "sam2-random" else exp.config.filter,
                 "filter.scorer.random": exp.config.filter == "sam2-random", "filter.thresholds_file": exp.calibration,
                 "seed": exp.config.seed, **flatten(exp.config.synthesis_overrides)}
    if exp.ray_address:
        overrides["ray.address"] = exp.ray_address
    config = SynthesisConfig.from_preset(exp.config.synthesis).with_overrides(overrides)
    if unfiltered:  # the same masks, seeds and candidates as the filtered run, every one kept (jobs.experiment.draws)
        unfiltered = config.filter.model_copy(update={"kind": "none", "thresholds_file": None})
        config = config.model_copy(update={"filter": unfiltered, "early_reject_at": None,
                                           "early_reject_below": 0.0}).with_overrides(
            {"out": exp.synthetic_unfiltered, "adaptive": False, "keep": config.candidates})
    return config


def segment_config(exp: Experiment):
    config = SegmentConfig.from_preset(exp.config.segment).with_overrides(flatten(exp.config.segment_overrides))
    return config.with_overrides({"seed": exp.config.seed})


def segment_sources(exp: Experiment, name: str):
    drawn = {"mrgen-unfiltered": ("equal_count", "each mask's first k of the filtered run's n candidates, k its kept "
                                                 "count: chosen without scores"),
             "mrgen-best": ("best", "each mask's best-scored candidate"),
             "mrgen-worst": ("worst", "each mask's worst-scored candidate")}
    if name in drawn:
        draw, label = drawn[name]
        ids = load_draws(exp.synthetic_unfiltered)[draw]
        return [TrainSource(exp.synthetic_unfiltered, split=None, slice_ids=tuple(ids), label=label)]
    return {"source-only": [TrainSource(exp.db, datasets=(SOURCE_DATASET,), split=exp.config.source_split)],
            "mrgen": [TrainSource(exp.synthetic, split=None)],
            "oracle": [TrainSource(exp.oracle_db, datasets=(TARGET_DATASET,), split="train")]}[name]


# ---------------------------------------------------------------- steps

def build_db(exp: Experiment) -> None:
    index = build_phantom_db(exp.db, phantom_config(exp))
    print(index.summary(), flush=True)
    rows = [r for r in read_table(exp.db, has_mask=True).sort_by("slice_id").to_pylist() if r["organs"]]
    sheet = exp.path("db_sheet.png")
    contact_sheet(items_from_rows(rows[:: max(1, len(rows) // 16)][:16]), sheet, title=f"{exp.db}: annotated slices")
    exp.results["db"] = {"uri": exp.db, "rows": index.rows, "counts": index.counts(), "sheet": sheet}
    exp.say(f"   {index.rows} slices; contact sheet {sheet}")


def build_oracle_db(exp: Experiment) -> None:
    index = build_phantom_db(exp.oracle_db, phantom_config(exp, oracle=True))
    exp.say(f"   {index.rows} slices (target training volumes annotated, for the oracle only)")


def _hand_out(exp: Experiment, key: str, minutes: Any, what: str) -> None:
    """Record (report.json ``budget``) and show the minutes a budgeted step hands its jobs."""
    exp.results.setdefault("budget", {})[key] = minutes
    exp.say(f"   {exp.budget.remaining() / 60:.1f} of {exp.config.minutes:g} min left; {what}")


def train_generator(exp: Experiment) -> None:
    config = train_config(exp)
    if exp.budget is not None:
        todo = tuple(s for s in STAGES if not is_finished(exp.path("generator"), s))
        minutes = {s: round(m, 2) for s, m in generator_minutes(exp.config, exp.budget.remaining(), todo).items()}
        _hand_out(exp, "generator_minutes", minutes,
                  "training loops get " + ", ".join(f"{s} {m:.1f} min" for s, m in minutes.items()))
        config = config.with_overrides({f"{s}.max_minutes": m for s, m in minutes.items()})
    results = run_all(config, exp.db, exp.path("generator"), resume=True, ray_address=exp.ray_address)
    exp.results["generator"] = {"bundle": exp.bundle, "stages": [
        {"stage": r.stage, "steps": r.steps, "seconds": round(r.seconds, 1),
         "final_loss": r.history[-1].get("loss") if r.history else None} for r in results]}
    exp.say("   " + ", ".join(f"{r.stage} {r.steps} steps" for r in results))


def check_controller(exp: Experiment) -> None:
    """Mask dependence on the source masks synthesis uses (its split) and on held-out ones (generalisation), and
    same-seed samples with own and other masks on those (``generator/mask_following.png``) and on the target
    modality's held-out masks, all from one loaded bundle."""
    bundle = ModelBundle.load(exp.bundle)
    splits = dict.fromkeys((exp.config.source_split, "test"))
    loss = {split: evaluate_mask_dependence(bundle, exp.db, split=split, dataset=SOURCE_DATASET) for split in splits}
    for split, r in loss.items():
        print(f"[experiment] mask controller on {r['slices']} {split} source slices: loss with own mask "
              f"{r['mse_true']:.4f}, empty {r['mse_empty']:.4f}, another slice's {r['mse_shuffled']:.4f}, UNet alone "
              f"{r['mse_unet']:.4f} (gain {r['gain']:+.3f})", flush=True)
    sampling = synthesis_config(exp).sampling
    sets = (("samples", "source", exp.mask_following_sheet, exp.config.source_split, SOURCE_DATASET),
            # the target modality's held-out masks: what the embedded bundle's test holds to half the ceiling
            ("samples_target", "held-out target", None, "test", TARGET_DATASET))
    follow = {name: evaluate_mask_following(bundle, exp.db, sheet, split=split, dataset=dataset, sampling=sampling,
                                            limit=exp.config.following_slices, sheet_slices=exp.config.sheet_slices)
              for name, _, sheet, split, dataset in sets}
    write_controller_check({"loss": loss, **follow}, exp.mask_check)
    for name, label, *_ in sets:
        f = follow[name]
        exp.say(f"   samples follow {label} masks: contrast {f['following']:+.3f} (autoencoder ceiling "
                f"{f['autoencoder_ceiling']:+.3f}), separation {f['separation_following']:+.3f} (ceiling "
                f"{f['separation_ceiling']:+.3f})")
    exp.say(f"   sheet {exp.mask_following_sheet}")


def calibrate_filter(exp: Experiment) -> None:
    section = synthesis_config(exp).filter
    result = calibrate(exp.db, section.kind, section.scorer, quantile=exp.config.calibration_quantile,
                       limit=exp.config.calibration_slices, rule=section.rule, dataset=[SOURCE_DATASET],
                       split=exp.config.source_split)
    write_calibration(result, exp.calibration)
    print(describe(result), flush=True)
    t = result.thresholds
    exp.say(f"   {result.scorer} on {result.slices} {exp.data_label} source slices: thresholds organ IoU "
            f"{t.organ_iou:.2f}, conf {t.organ_conf:.2f}, mean IoU {t.mean_iou:.2f}, mean conf {t.mean_conf:.2f}")


def _synthesize(exp: Experiment, config, key: str) -> None:
    report = run_synthesis(config)
    if not report.get("rows"):
        totals = report.get("totals") or {}
        raise RuntimeError(f"synthesis kept no image ({totals.get('candidates_generated')} generated, filter "
                           f"{report.get('filter_model')}): an untrained SAM2 passes nothing at the paper's "
                           f"thresholds; use experiment.filter=medsam or none. Delete {config.out} and rerun.")
    exp.results[key] = {k: report.get(k) for k in ("out", "rows", "totals", "scores_meaningful", "filter_model",
                                                   "seconds", "contact_sheet")}
    totals = report["totals"]
    exp.say(f"   {synthesis_counts(totals)}"
            + (f" (strict pass rate {totals['strict_pass_rate']:.0%})" if totals.get("strict_pass_rate") is not None
               and config.filter.enabled else ""))


def synthesize(exp: Experiment) -> None:
    _synthesize(exp, synthesis_config(exp), "synthesis")


def synthesize_unfiltered(exp: Experiment) -> None:
    """Every candidate the filtered run generated, unfiltered; then the training sets drawn from them."""
    if not _synthesized(exp.synthetic_unfiltered):
        _synthesize(exp, synthesis_config(exp, unfiltered=True), "synthesis_unfiltered")
    candidates = read_table(exp.synthetic_unfiltered, ["mask_key", "candidate_index", "slice_id"]).to_pylist()
    draws = draw_training_sets(read_audit(exp.synthetic).to_pylist(), candidates)
    write_draws(draws, exp.synthetic_unfiltered)
    exp.say(f"   drawn from its {len(candidates)} candidates: " + ", ".join(f"{k} {len(v)}" for k, v in draws.items()))


def train_segmenters(exp: Experiment) -> None:
    config = segment_config(exp)
    minutes = None
    if exp.budget is not None:
        minutes = round(segmenter_minutes(exp.config, exp.budget.remaining()), 2)
        _hand_out(exp, "segmenter_minutes", minutes, f"each segmenter gets {minutes:.1f} min")
        config = config.with_overrides({"max_minutes": minutes})
    todo = [n for n in exp.segmenters if not is_trained(exp.segmenter(n))]
    if exp.config.parallel_segmenters:
        manifests = wait_for({n: submit_training(config, segment_sources(exp, n), exp.segmenter(n)) for n in todo},
                             "segmenters", minutes)
    else:
        manifests = {n: wait_for({n: submit_training(config, segment_sources(exp, n), exp.segmenter(n))},
                                 f"segmenter {n}", minutes)[n] for n in todo}
    for name in todo:
        manifest = manifests[name]
        exp.say(f"   {name}: {manifest['training_cases']} training slices, {manifest['iterations']} iterations")


def evaluations(exp: Experiment) -> dict[str, dict[str, Any]]:
    """Report URI → evaluation: each segmenter on the target test volumes, and (``fit_slices``) pooled over
    its own training slices, which tells a segmenter that learnt nothing from one that learnt but did not transfer."""
    jobs = {exp.evaluation(n): {"name": n, "test_uri": exp.db, "split": "test", "datasets": [TARGET_DATASET],
                                "predictions_uri": exp.path("eval", f"{n}-predictions.npz")} for n in exp.segmenters}
    if exp.config.fit_slices:
        for n in exp.segmenters:
            (source,) = segment_sources(exp, n)
            jobs[exp.fit(n)] = {"name": n, "test_uri": source.uri, "split": source.split, "datasets": source.datasets,
                                "modalities": source.modalities, "slice_ids": source.slice_ids, "pooled": True,
                                "limit": exp.config.fit_slices}
    return jobs


def evaluate(exp: Experiment) -> None:
    config = segment_config(exp)
    todo = {uri: job for uri, job in evaluations(exp).items() if not storage.exists(uri)}
    submit = {uri: (lambda job=job: submit_evaluation(config, exp.segmenter(job["name"]), **{
        k: v for k, v in job.items() if k != "name"})) for uri, job in todo.items()}
    if exp.config.parallel_segmenters:
        reports = wait_for({uri: f() for uri, f in submit.items()}, "evaluations")
    else:
        reports = {uri: ray.get(f()) for uri, f in submit.items()}
    for uri, report in reports.items():
        write_dice_report(report, uri)
        what = (f"its own {report['n_slices']} training slices (pooled)" if report["pooled"]
                else f"{exp.data_label} target test volumes ({report['n_volumes']})")
        print(f"[experiment] {todo[uri]['name']} on {what}:\n{report['table']}", flush=True)
    tests = {todo[uri]["name"]: r for uri, r in reports.items() if not r["pooled"]}
    if tests:
        spans = intervals({n: r["dice"]["per_volume"] for n, r in tests.items() if r["n_volumes"] >= 2})
        means = {n: spans[n]["mean"] if n in spans else {"value": r["mean_dice"]} for n, r in tests.items()}
        exp.say(f"   Dice on {exp.data_label} target test volumes ({next(iter(tests.values()))['n_volumes']}; "
                "95 % interval): " + ", ".join(f"{n} {interval_text(m)}" for n, m in means.items()))


def fid(exp: Experiment) -> None:
    cfg = exp.config
    unfiltered = None
    if "mrgen-unfiltered" in exp.segmenters:  # the unfiltered segmenter's set: as many images, chosen without scores
        equal_count = load_draws(exp.synthetic_unfiltered)["equal_count"]
        unfiltered = SliceSet(exp.synthetic_unfiltered, slice_id=equal_count)
    result = fid_beside_source(SliceSet(exp.db, dataset=TARGET_DATASET),
                               SliceSet(exp.db, dataset=SOURCE_DATASET, split=cfg.source_split),
                               SliceSet(exp.synthetic), unfiltered, cfg.fid_extractor, cfg.fid_weights, cfg.fid_limit)
    data = exp.data_label
    write_fid_report({**result, "data": data}, exp.fid_report)
    exp.say(f"   features: {result['extractor']}")
    for label, r in (("synthetic", result), ("unfiltered synthetic at equal count", result.get("unfiltered"))):
        if r:
            kid = {pair: "-" if r["kid"][pair] is None else f"{r['kid'][pair]:.4f} ± {r['kid_std'][pair]:.4f}"
                   for pair in r["kid"]}
            exp.say(f"   FID / KID vs {data} target ({r['n']['real_target']} images): {label} "
                    f"{r['synthetic_vs_real_target']:.1f} / {kid['synthetic_vs_real_target']}, {data} source "
                    f"{r['source_vs_real_target']:.1f} / {kid['source_vs_real_target']} ({r['n']['synthetic']} "
                    "images each)")


def report(exp: Experiment) -> None:
    exp.results["report"] = write_report_folder(exp)
    exp.say(f"   {exp.path('report', 'report.md')}")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Experiment], None]
    done: Callable[[Experiment], bool]
    wanted: Callable[[Experiment], bool] = lambda e: True


def _generator_trained(exp: Experiment) -> bool:
    return is_finished(exp.path("generator"), "controlnet")


def _all_exist(*uris: str) -> bool:
    return all(storage.exists(u) for u in uris)


def _segmenters_trained(exp: Experiment) -> bool:
    return all(is_trained(exp.segmenter(n)) for n in exp.segmenters)


def _synthesized(uri: str) -> bool:
    return storage.exists(storage.join(uri, REPORT))


STEPS: list[Step] = [
    # build_phantom_db is a no-op when the DB already holds this phantom config, so it always runs.
    Step("build-db", build_db, lambda e: False),
    Step("build-oracle-db", build_oracle_db, lambda e: False, lambda e: e.config.oracle),
    Step("train-generator", train_generator, _generator_trained, lambda e: e.trains_generator),
    Step("check-controller", check_controller, lambda e: _all_exist(e.mask_check, e.mask_following_sheet)),
    Step("calibrate-filter", calibrate_filter, lambda e: _all_exist(e.calibration),
         lambda e: e.calibration is not None),
    Step("synthesize", synthesize, lambda e: _synthesized(e.synthetic)),
    Step("synthesize-unfiltered", synthesize_unfiltered, lambda e: _all_exist(e.draws),
         lambda e: "mrgen-unfiltered" in e.segmenters),
    Step("train-segmenters", train_segmenters, _segmenters_trained),
    Step("evaluate", evaluate, lambda e: _all_exist(*evaluations(e))),
    Step("fid", fid, lambda e: _all_exist(e.fid_report)),
    Step("report", report, lambda e: False),
]


def run_steps(exp: Experiment, steps: list[Step] | None = None) -> Experiment:
    if exp.config.minutes is not None and exp.budget is None:
        exp.budget = TimeBudget.minutes(exp.config.minutes)
    init_ray(RayConfig(address=exp.ray_address))
    timings = exp.results.setdefault("step_seconds", {})
    chosen = [s for s in (steps or STEPS) if s.wanted(exp)]
    for number, step in enumerate(chosen, start=1):
        label = f"[{number}/{len(chosen)}] {step.name}"
        if step.done(exp):
            exp.say(f"== {label}: done already, skipped")
            continue
        start = time.monotonic()
        exp.say(f"== {label}")
        print(f"== experiment step {step.name}", flush=True)
        step.run(exp)
        timings[step.name] = round(time.monotonic() - start, 1)
        left = f"; {exp.budget.remaining() / 60:.1f} of {exp.config.minutes:g} min left" if exp.budget else ""
        exp.say(f"   done in {timings[step.name]:.0f} s{left}")
    return exp


def run_experiment(out_dir: str, quick: bool = False, config: ExperimentConfig | None = None,
                   ray_address: str | None = None, db_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every step (only the DB with ``db_only``); returns the report (OUT/report/report.json).

    The console shows one line per step and a progress bar; everything the jobs print goes to
    ``OUT/logs/experiment.log`` (``config.verbose``: shown live instead)."""
    config = config or ExperimentConfig.from_preset("quick" if quick else "default")
    out = storage.absolute(out_dir)
    log = os.path.join(storage.local_path(out), "logs", "experiment.log") if storage.is_local(out) else None
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    exp = Experiment(out=out, config=config, ray_address=ray_address)
    with Console(log, verbose=config.verbose) as console, ray_stopped_after():
        if log and not config.verbose:
            console.line(f"mrgen demo → {out} (logs: {log})")
        exp = run_steps(exp, STEPS[:1] if db_only else None)
    return exp.results["db"] if db_only else exp.results["report"]
