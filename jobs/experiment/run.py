"""The paper's cross-modality experiment (§4, Table 3) in one command, as ordered named steps.

    build-db            phantom MRGen-DB (source modality with masks, target modality masks only on test volumes)
    train-generator     `mrgen train all`: autoencoder → text-guided UNet → mask controller
    check-controller    `mrgen eval mask`: denoising loss with each slice's own mask vs another's (train and test
                        masks), same-seed samples with own and other masks (generator/mask_following.png)
    synthesize          target-modality images from the source-modality training masks, with the filter
    train-segmenters    nnU-Net (1) on real source-modality slices, (2) on the synthetic target-modality slices
    evaluate            volumetric Dice of both on the held-out real target-modality test volumes; each one's Dice
                        pooled over its own training slices (did it learn what it was given?)
    fid                 FID of synthetic-vs-real-target beside source-vs-real-target
    report              OUT/report/: report.md, report.json, contact sheets

Each step skips when its output exists, so rerunning the command resumes after the last finished step.
Layout under OUT: db/, generator/ (with mask_dependence.json, mask_following.png), synthetic/,
segmenters/{source-only,mrgen}/, eval/{name}.json and eval/{name}-fit.json, fid.json, report/.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mrgen.jobs.experiment.config import ExperimentConfig
from mrgen.platform import storage
from mrgen.platform.budget import TimeBudget
from mrgen.platform.config import flatten

SEGMENTERS = ("source-only", "mrgen")


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
    def bundle(self) -> str:
        return self.path("generator", "bundle")

    @property
    def synthetic(self) -> str:
        return self.path("synthetic")

    @property
    def mask_check(self) -> str:
        return self.path("generator", "mask_dependence.json")

    @property
    def mask_following_sheet(self) -> str:
        return self.path("generator", "mask_following.png")

    def segmenter(self, name: str) -> str:
        return self.path("segmenters", name)

    def evaluation(self, name: str) -> str:
        return self.path("eval", f"{name}.json")

    def fit(self, name: str) -> str:
        return self.path("eval", f"{name}-fit.json")


# ---------------------------------------------------------------- job configs from the experiment's budgets

def phantom_config(exp: Experiment):
    from mrgen.datasets.phantom import PhantomConfig

    return PhantomConfig.from_preset(exp.config.phantom).with_overrides(flatten(exp.config.phantom_overrides))


def train_config(exp: Experiment):
    from mrgen.jobs.train.config import TrainConfig

    return TrainConfig.from_preset(exp.config.train).with_overrides(flatten(exp.config.train_overrides))


def synthesis_config(exp: Experiment):
    from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_MODALITY
    from mrgen.jobs.synthesis.config import SynthesisConfig

    overrides = {"model": exp.bundle, "source": exp.db, "out": exp.synthetic, "target_modalities": [TARGET_MODALITY],
                 "source_datasets": [SOURCE_DATASET], "source_splits": [exp.config.source_split],
                 "filter": "none" if exp.config.filter == "none" else "sam2",
                 "sam2.random": exp.config.filter == "sam2-random", **flatten(exp.config.synthesis_overrides)}
    if exp.ray_address:
        overrides["ray.address"] = exp.ray_address
    return SynthesisConfig.from_preset(exp.config.synthesis).with_overrides(overrides)


def segment_config(exp: Experiment):
    from mrgen.jobs.segment.config import SegmentConfig

    return SegmentConfig.from_preset(exp.config.segment).with_overrides(flatten(exp.config.segment_overrides))


def segment_sources(exp: Experiment, name: str):
    from mrgen.datasets.phantom import SOURCE_DATASET
    from mrgen.jobs.segment.train import TrainSource

    if name == "source-only":
        return [TrainSource(exp.db, datasets=(SOURCE_DATASET,), split=exp.config.source_split)]
    return [TrainSource(exp.synthetic, split=None)]


# ---------------------------------------------------------------- steps

def build_db(exp: Experiment) -> None:
    from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
    from mrgen.datasets.phantom import build_phantom_db
    from mrgen.datasets.store import read_table

    index = build_phantom_db(exp.db, phantom_config(exp))
    print(index.summary(), flush=True)
    rows = [r for r in read_table(exp.db, has_mask=True).sort_by("slice_id").to_pylist() if r["organs"]]
    sheet = exp.path("db_sheet.png")
    contact_sheet(items_from_rows(rows[:: max(1, len(rows) // 16)][:16]), sheet, title=f"{exp.db}: annotated slices")
    print(f"contact sheet: {sheet}", flush=True)
    exp.results["db"] = {"uri": exp.db, "rows": index.rows, "counts": index.counts(), "sheet": sheet}


def _hand_out(exp: Experiment, key: str, minutes: Any, what: str) -> None:
    """Record (report.json ``budget``) and show the minutes a budgeted step hands its jobs."""
    exp.results.setdefault("budget", {})[key] = minutes
    print(f"[experiment] {exp.budget.remaining() / 60:.1f} of {exp.config.minutes:g} min left; {what}", flush=True)


def train_generator(exp: Experiment) -> None:
    from mrgen.jobs.experiment.budget import generator_minutes
    from mrgen.jobs.train.config import STAGES
    from mrgen.jobs.train.run import is_finished, run_all

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


def check_controller(exp: Experiment) -> None:
    """Mask dependence on the source masks synthesis uses (its split) and on held-out ones (generalisation), and
    same-seed samples with own and other masks (``generator/mask_following.png``), all from one loaded bundle."""
    from mrgen.datasets.phantom import SOURCE_DATASET
    from mrgen.jobs.train.eval_mask import evaluate_mask_dependence, evaluate_mask_following
    from mrgen.models.bundle import ModelBundle

    bundle = ModelBundle.load(exp.bundle)
    splits = dict.fromkeys((exp.config.source_split, "test"))
    loss = {split: evaluate_mask_dependence(bundle, exp.db, split=split, dataset=SOURCE_DATASET) for split in splits}
    for split, r in loss.items():
        print(f"[experiment] mask controller on {r['slices']} {split} source slices: loss with own mask "
              f"{r['mse_true']:.4f}, empty {r['mse_empty']:.4f}, another slice's {r['mse_shuffled']:.4f}, UNet alone "
              f"{r['mse_unet']:.4f} (gain {r['gain']:+.3f})", flush=True)
    cfg = synthesis_config(exp)
    follow = evaluate_mask_following(
        bundle, exp.db, exp.mask_following_sheet, split=exp.config.source_split, limit=exp.config.following_slices,
        sheet_slices=exp.config.sheet_slices, steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler,
        dataset=SOURCE_DATASET)
    print(f"[experiment] samples at {follow['organs']} organs of {follow['slices']} {follow['split']} masks: organ "
          f"contrast error with own mask {follow['error_own']:.4f}, with another slice's {follow['error_other']:.4f} "
          f"(following {follow['following']:+.3f}; the autoencoder's reconstructions of the real slices would score "
          f"{follow['autoencoder_ceiling']:+.3f}); sheet {follow['sheet']}", flush=True)
    storage.write_text(exp.mask_check, json.dumps({"loss": loss, "samples": follow}, indent=1))


def synthesize(exp: Experiment) -> None:
    from mrgen.jobs.synthesis.run import main

    report = main(synthesis_config(exp))
    if not report.get("rows"):
        totals = report.get("totals") or {}
        raise RuntimeError(f"synthesis kept no image ({totals.get('candidates_generated')} generated, filter "
                           f"{report.get('filter_model')}): an untrained SAM2 passes nothing at the paper's thresholds; "
                           f"use experiment.filter=none or a SAM2 checkpoint. Delete {exp.synthetic} and rerun.")
    exp.results["synthesis"] = {k: report.get(k) for k in ("out", "rows", "totals", "scores_meaningful",
                                                            "filter_model", "seconds", "contact_sheet")}


def train_segmenters(exp: Experiment) -> None:
    import ray

    from mrgen.jobs.segment.train import is_trained, submit_training

    config = segment_config(exp)
    if exp.budget is not None:
        from mrgen.jobs.experiment.budget import segmenter_minutes

        minutes = round(segmenter_minutes(exp.config, exp.budget.remaining()), 2)
        _hand_out(exp, "segmenter_minutes", minutes, f"each segmenter gets {minutes:.1f} min")
        config = config.with_overrides({"max_minutes": minutes})
    todo = [n for n in SEGMENTERS if not is_trained(exp.segmenter(n))]
    if exp.config.parallel_segmenters:
        refs = {n: submit_training(config, segment_sources(exp, n), exp.segmenter(n)) for n in todo}
        manifests = {n: ray.get(ref) for n, ref in refs.items()}
    else:
        manifests = {n: ray.get(submit_training(config, segment_sources(exp, n), exp.segmenter(n))) for n in todo}
    for name, manifest in manifests.items():
        print(f"[experiment] segmenter {name}: {manifest['training_cases']} training slices, "
              f"{manifest['timings']}", flush=True)


def evaluations(exp: Experiment) -> dict[str, dict[str, Any]]:
    """Report URI → evaluation: each segmenter on the real target test volumes, and (``fit_slices``) pooled over
    its own training slices, which tells a segmenter that learnt nothing from one that learnt but did not transfer."""
    from mrgen.datasets.phantom import TARGET_DATASET

    jobs = {exp.evaluation(n): {"name": n, "test_uri": exp.db, "split": "test", "datasets": [TARGET_DATASET],
                                "predictions_uri": exp.path("eval", f"{n}-predictions.npz")} for n in SEGMENTERS}
    if exp.config.fit_slices:
        for n in SEGMENTERS:
            (source,) = segment_sources(exp, n)
            jobs[exp.fit(n)] = {"name": n, "test_uri": source.uri, "split": source.split, "datasets": source.datasets,
                                "modalities": source.modalities, "pooled": True, "limit": exp.config.fit_slices}
    return jobs


def evaluate(exp: Experiment) -> None:
    import ray

    from mrgen.jobs.segment.evaluate import submit_evaluation, write_report

    config = segment_config(exp)
    todo = {uri: job for uri, job in evaluations(exp).items() if not storage.exists(uri)}
    submit = {uri: (lambda job=job: submit_evaluation(config, exp.segmenter(job["name"]), **{
        k: v for k, v in job.items() if k != "name"})) for uri, job in todo.items()}
    if exp.config.parallel_segmenters:
        refs = {uri: f() for uri, f in submit.items()}
        reports = {uri: ray.get(r) for uri, r in refs.items()}
    else:
        reports = {uri: ray.get(f()) for uri, f in submit.items()}
    for uri, report in reports.items():
        write_report(report, uri)
        what = (f"its own {report['n_slices']} training slices (pooled)" if report["pooled"]
                else f"real target test volumes ({report['n_volumes']})")
        print(f"[experiment] {todo[uri]['name']} on {what}:\n{report['table']}", flush=True)


def fid(exp: Experiment) -> None:
    from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_DATASET
    from mrgen.jobs.evaluate.fid import FeatureExtractor, fid_from_features, load_images

    cfg = exp.config
    net = FeatureExtractor(cfg.fid_extractor, cfg.fid_weights)
    _, real_target = load_images(exp.db, cfg.fid_limit, dataset=TARGET_DATASET)
    _, source = load_images(exp.db, cfg.fid_limit, dataset=SOURCE_DATASET, split=cfg.source_split)
    _, synthetic = load_images(exp.synthetic, cfg.fid_limit)
    feats = {name: net(images) for name, images in
             {"real_target": real_target, "source": source, "synthetic": synthetic}.items()}
    result = {"extractor": net.id, "comparable_with_published": cfg.fid_extractor == "inception" and bool(cfg.fid_weights),
              "n": {k: len(v) for k, v in feats.items()},
              "synthetic_vs_real_target": fid_from_features(feats["synthetic"], feats["real_target"]),
              "source_vs_real_target": fid_from_features(feats["source"], feats["real_target"])}
    storage.write_text(exp.path("fid.json"), json.dumps(result, indent=1))


def report(exp: Experiment) -> None:
    from mrgen.jobs.experiment.report import write_report_folder

    exp.results["report"] = write_report_folder(exp)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Experiment], None]
    done: Callable[[Experiment], bool]


def _generator_trained(exp: Experiment) -> bool:
    from mrgen.jobs.train.run import is_finished

    return is_finished(exp.path("generator"), "controlnet")


def _all_exist(*uris: str) -> bool:
    return all(storage.exists(u) for u in uris)


STEPS: list[Step] = [
    # build_phantom_db is a no-op when the DB already holds this phantom config, so it always runs.
    Step("build-db", build_db, lambda e: False),
    Step("train-generator", train_generator, _generator_trained),
    Step("check-controller", check_controller, lambda e: _all_exist(e.mask_check, e.mask_following_sheet)),
    Step("synthesize", synthesize, lambda e: _all_exist(storage.join(e.synthetic, "report.json"))),
    Step("train-segmenters", train_segmenters,
         lambda e: _all_exist(*(storage.join(e.segmenter(n), "mrgen_segmenter.json") for n in SEGMENTERS))),
    Step("evaluate", evaluate, lambda e: _all_exist(*evaluations(e))),
    Step("fid", fid, lambda e: _all_exist(e.path("fid.json"))),
    Step("report", report, lambda e: False),
]


def run_steps(exp: Experiment, steps: list[Step] | None = None) -> Experiment:
    from mrgen.platform.cluster import RayConfig, init_ray

    if exp.config.minutes is not None and exp.budget is None:
        exp.budget = TimeBudget.minutes(exp.config.minutes)
    init_ray(RayConfig(address=exp.ray_address))
    timings = exp.results.setdefault("step_seconds", {})
    for step in steps or STEPS:
        if step.done(exp):
            print(f"== experiment step {step.name}: done already, skipped", flush=True)
            continue
        start = time.monotonic()
        print(f"== experiment step {step.name}", flush=True)
        step.run(exp)
        timings[step.name] = round(time.monotonic() - start, 1)
        print(f"== experiment step {step.name} done in {timings[step.name]:.0f}s", flush=True)
    return exp


def run_experiment(out_dir: str, quick: bool = False, config: ExperimentConfig | None = None,
                   ray_address: str | None = None, db_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every step (only the DB with ``db_only``); returns the report (OUT/report/report.json)."""
    config = config or ExperimentConfig.from_preset("quick" if quick else "default")
    exp = run_steps(Experiment(out=storage.absolute(out_dir), config=config, ray_address=ray_address), STEPS[:1] if db_only else None)
    return exp.results["db"] if db_only else exp.results["report"]
