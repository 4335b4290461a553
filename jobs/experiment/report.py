"""The experiment's report folder: report.md (tables + notes), report.json, and PNG contact sheets.

    OUT/report/report.md          Dice tables (target-modality test volumes; own training slices), FID, what ran
    OUT/report/report.json        the same numbers, machine-readable
    OUT/report/data.png           DB source slices | synthetic target slices | DB target test slices
                                  ("phantom" for the embedded phantom's renderings, "real" for a user's scans)
    OUT/report/mask_following.png the check-controller step's same-seed samples with own and other masks
    OUT/report/segmentation.png   target test slices: image, ground truth, each segmenter's prediction
    OUT/report/candidates.png     the filter's view: a few masks with every candidate, its scores and fate
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_DATASET
from mrgen.datasets.store import read_table
from mrgen.jobs.evaluate.fid import FidReport, load_fid_report
from mrgen.jobs.evaluate.mask import ControllerCheck, load_controller_check
from mrgen.jobs.evaluate.segmenter import DiceEvaluation, load_dice_report, load_predictions
from mrgen.jobs.experiment.compare import differences, goal, interval_text, intervals, verdict
from mrgen.jobs.segment.train import MANIFEST as SEGMENTER_MANIFEST, SegmenterManifest, load_manifest
from mrgen.jobs.synthesis.run import REPORT as SYNTHESIS_REPORT, load_report as load_synthesis_report
from mrgen.jobs.train.config import STAGES
from mrgen.jobs.train.run import training_chain
from mrgen.models.manifest import MANIFEST, read_manifest
from mrgen.models.selection import FilterCalibration, load_calibration
from mrgen.platform import storage

T = TypeVar("T")

TRAINED_ON = {"source-only": "{data} source-modality slices",
              "mrgen": "MRGen synthetic target-modality slices (filtered)",
              "mrgen-unfiltered": "MRGen synthetic target-modality slices (unfiltered: as many, same masks and "
                                  "candidates, chosen without scores)",
              "mrgen-best": "each mask's best-scored synthetic candidate",
              "mrgen-worst": "each mask's worst-scored synthetic candidate",
              "oracle": "{data} target-modality training slices with their masks (the bound)"}


REPORT_JSON = ("report", "report.json")  # under the experiment's OUT


def load_report(out: str) -> dict[str, Any]:
    """A finished experiment's ``OUT/report/report.json``; the error names the folder."""
    uri = storage.join(out, *REPORT_JSON)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{out}: no {'/'.join(REPORT_JSON)}: not a finished `mrgen demo` output")
    return json.loads(storage.read_text(uri))


def _optional(load: Callable[[str], T], uri: str, marker: str | None = None) -> T | None:
    """``load(uri)`` when ``uri`` (a folder: its ``marker`` file) exists; None when its step did not run."""
    return load(uri) if storage.exists(storage.join(uri, marker) if marker else uri) else None


@dataclass
class Outputs:
    """What the experiment's other steps wrote, each read by the loader beside the job that writes it; a step that
    did not run leaves its entry empty."""

    evals: dict[str, DiceEvaluation]  # segmenter → Dice on the target test volumes
    fits: dict[str, DiceEvaluation]  # segmenter → Dice pooled over its own training slices
    segmenters: dict[str, SegmenterManifest | dict]
    fid: FidReport | dict
    check: ControllerCheck | dict  # the mask controller's
    synthesis: dict[str, Any]
    unfiltered: dict[str, Any]  # the unfiltered synthesis run's report
    calibration: FilterCalibration | None
    generator: dict[str, Any]  # the bundle's manifest


def read_outputs(exp) -> Outputs:
    names = exp.segmenters
    return Outputs(
        evals={n: ev for n in names if (ev := _optional(load_dice_report, exp.evaluation(n)))},
        fits={n: ev for n in names if (ev := _optional(load_dice_report, exp.fit(n)))},
        segmenters={n: _optional(load_manifest, exp.segmenter(n), SEGMENTER_MANIFEST) or {} for n in names},
        fid=_optional(load_fid_report, exp.fid_report) or {},
        check=_optional(load_controller_check, exp.mask_check) or {},
        synthesis=_optional(load_synthesis_report, exp.synthetic, SYNTHESIS_REPORT) or {},
        unfiltered=_optional(load_synthesis_report, exp.synthetic_unfiltered, SYNTHESIS_REPORT) or {},
        calibration=_optional(load_calibration, exp.calibration) if exp.calibration else None,
        generator=_optional(read_manifest, exp.bundle, MANIFEST) or {})


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def dice_table(evals: dict[str, dict[str, Any]], trained_on: dict[str, str],
               spans: dict[str, dict[str, Any]] | None = None) -> str:
    """One row per segmenter: mean and per-organ Dice (%), with the 95 % intervals over volumes in ``spans``."""
    organs = next(iter(evals.values()))["dice"]["organs"] if evals else []
    head = ("| segmenter | trained on | mean Dice (%)" + (" [95 % interval]" if spans else "") + " | "
            + " | ".join(organs) + " |")
    lines = [head, "|" + "---|" * (3 + len(organs))]
    for name, ev in evals.items():
        per = ev["dice"]["per_organ"]
        span = (spans or {}).get(name)
        mean = interval_text(span["mean"]) if span else _pct(ev["mean_dice"])
        cells = [interval_text(span["per_organ"][o]) if span and o in span["per_organ"] else _pct(per.get(o))
                 for o in organs]
        lines.append(f"| {name} | {trained_on.get(name, '')} | **{mean}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_lines(diffs: dict[str, dict[str, Any]]) -> list[str]:
    if not diffs:
        return []
    volumes = next(iter(diffs.values()))["volumes"]  # every difference pairs the same test volumes
    lines = ["## Differences (Dice points, paired 95 % bootstrap interval over the same "
             f"{volumes} test volumes)", "", "| difference | value [95 % interval] | reads |", "|---|---|---|"]
    lines += [f"| {d['label']} | {interval_text(d, signed=True)} | {verdict(d)} |" for d in diffs.values()]
    return lines + [""]


def _data_sheet(exp, uri: str, n: int) -> None:
    def pick(db: str, caption: str, **filters) -> list[dict]:
        rows = [r for r in read_table(db, **filters).sort_by("slice_id").to_pylist() if r["organs"]]
        rows = rows[:: max(1, len(rows) // n)][:n]
        items = items_from_rows(rows, caption="modality")
        for item in items:
            item["caption"] = f"{caption}: {item['caption']}"
        return items

    data = exp.data_label
    items = (pick(exp.db, f"{data} source", dataset=SOURCE_DATASET, split=exp.config.source_split, has_mask=True)
             + pick(exp.synthetic, "synthetic", has_mask=True)
             + pick(exp.db, f"{data} target (test)", dataset=TARGET_DATASET, split="test", has_mask=True))
    contact_sheet(items, uri, columns=n, cell=128, caption_lines=3,
                  title=f"rows: {data} source-modality | MRGen synthetic target-modality | {data} target-modality test")


def _following_lines(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    return [f"Samples (`mask_following.png`, {f['sampler']} {f['steps']} steps, guidance {f['guidance']}): at the "
            f"{f['organs']} organs of {f['slices']} {f['split']} masks, the organ contrast (inside minus a "
            f"{f['ring']}-pixel ring around) differs from the DB slice's by {f['error_own']:.4f} in the sample "
            f"drawn with that mask and by {f['error_other']:.4f} in the same-seed sample drawn with another slice's "
            f"mask: following **{f['following']:+.3f}** (1 − own/other; 0: the samples ignore their masks). Ceiling "
            f"set by the autoencoder (the DB slices' reconstructions scored the same way): "
            f"{f['autoencoder_ceiling']:+.3f}. Separation (how much more of each sample's variance around the organs "
            f"the mask it was drawn with explains than the other mask does, η²; blind to intensities): "
            f"**{f['separation_following']:+.3f}**, ceiling {f['separation_ceiling']:+.3f}.",
            ""]


def _target_following_lines(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    share = f["separation_following"] / f["separation_ceiling"] if f["separation_ceiling"] > 0 else float("nan")
    return [f"On the target modality's held-out masks ({f['slices']} `test` slices, never seen in training, drawn "
            f"as the target modality): contrast {f['following']:+.3f} (ceiling {f['autoencoder_ceiling']:+.3f}), "
            f"separation **{f['separation_following']:+.3f}** of a {f['separation_ceiling']:+.3f} ceiling "
            f"({share:.2f} of it; goal 0.5).", ""]


def _fit_lines(fits: dict[str, dict[str, Any]], trained_on: dict[str, str], data: str) -> list[str]:
    if not fits:
        return []
    slices = ", ".join(f"{n} {ev['n_slices']}" for n, ev in fits.items())
    return ["## Dice (%) on each segmenter's own training slices", "",
            f"Pooled over evenly spread training slices ({slices}). Low here means the segmenter did not learn "
            "what it was given (budget, or images that do not show their masks' organs); high here but low above "
            f"means it learnt and did not transfer to the {data} target modality.", "",
            dice_table(fits, trained_on), ""]


def trained_amounts(generator: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Steps each generator stage ran (as its bundle's manifest ``generator`` records them) and iterations each
    segmenter ran (fewer than configured under a budget)."""
    stages = (generator.get("training") or {}).get("stages", {})
    steps = {stage: {"steps": stages[stage].get("steps"), "max_steps": stages[stage].get("max_steps"),
                     "fine_tuned_runs": [run.get("steps") for run in training_chain(stages[stage])[1:]]}
             for stage in STAGES if stage in stages}  # pipeline order (manifests keep their keys sorted)
    segmenters = {}
    for name, manifest in manifests.items():
        planned = manifest.get("config") or {}
        segmenters[name] = {"iterations": manifest.get("iterations"),
                            "max_iterations": planned.get("epochs", 0) * planned.get("iterations", 0) or None}
    return {"generator": steps, "segmenters": segmenters}


def _budget_lines(exp, trained: dict[str, Any]) -> list[str]:
    gen = ", ".join(f"{s} {t['steps']}" + (f" of {t['max_steps']}" if t["max_steps"] else "")
                    + (f" (fine-tuning earlier runs of {' + '.join(map(str, t['fine_tuned_runs']))} steps)"
                       if t["fine_tuned_runs"] else "")
                    for s, t in trained["generator"].items())
    seg = ", ".join(f"{n} {t['iterations']}" + (f" of {t['max_iterations']}" if t["max_iterations"] else "")
                    for n, t in trained["segmenters"].items())
    budget = (f"Wall-time budget {exp.config.minutes:g} min: each training loop planned the steps that fit in its "
              f"share, so slower machines train less. " if exp.config.minutes else "")
    source = ("trained in this run" if exp.trains_generator
              else f"`{exp.config.generator}` ({exp.bundle}), trained beforehand")
    return [f"{budget}Generator {source}; its steps: {gen or '-'}. Segmenter iterations: {seg}.", ""]


def synthesis_counts(totals: dict[str, Any]) -> str:
    """The counts line, e.g. "96 masks (29 skipped: ...), 201 candidates, 78 kept" (a skipped mask costs no
    candidate)."""
    skipped = totals.get("masks_skipped") or 0
    return (f"{totals.get('masks', '-')} masks" + (f" ({skipped} skipped: empty, too small or unusable; reasons in "
                                                   "the synthesis report)" if skipped else "")
            + f", {totals.get('candidates_generated', '-')} candidates, {totals.get('candidates_kept', '-')} kept")


def _filter_lines(exp, synthesis: dict[str, Any], calibration: FilterCalibration | None) -> list[str]:
    totals = synthesis.get("totals") or {}
    lines = ["## Synthesis and filter", "",
             f"{synthesis_counts(totals)} ({totals.get('masks_relaxed', 0)} masks under relaxed "
             f"thresholds, {totals.get('masks_nothing_kept', 0)} with nothing kept); filter "
             f"`{synthesis.get('filter_model', '-')}`"
             + ("" if synthesis.get("scores_meaningful") else " — UNTRAINED or no filter: its scores mean nothing, "
                "kept candidates are effectively unfiltered"), ""]
    if totals.get("strict_pass_rate") is not None and synthesis.get("scores_meaningful"):
        lines += [f"Strict pass rate {100 * totals['strict_pass_rate']:.1f} % of candidates; "
                  f"{totals.get('candidates_per_kept') or 0:.2f} generated per kept.", ""]
    if calibration:
        t, d = calibration.thresholds, calibration.distributions
        data = exp.data_label
        lines += [f"Thresholds calibrated on {calibration.slices} {data} source slices scored against their masks "
                  f"(`mrgen filter calibrate`, quantile {calibration.quantile:g}): organ IoU {t.organ_iou:.3f}, "
                  f"organ confidence {t.organ_conf:.3f}, mean IoU {t.mean_iou:.3f}, mean confidence "
                  f"{t.mean_conf:.3f} (the paper's SAM2 values: 0.70 / 0.80 / 0.80 / 0.90).", "",
                  f"| {data} slices | IoU q25 | IoU median | conf q25 | conf median |", "|---|---|---|---|---|"]
        for name, stats in d.get("organs", {}).items():
            lines.append(f"| {name} ({stats['iou']['n']}) | {stats['iou']['q25']:.3f} | {stats['iou']['q50']:.3f} | "
                         f"{stats['conf']['q25']:.3f} | {stats['conf']['q50']:.3f} |")
        lines.append("")
    return lines


def _segmentation_sheet(exp, uri: str, n: int) -> bool:
    preds = {name: load_predictions(exp.path("eval", f"{name}-predictions.npz")) for name in exp.segmenters
             if storage.exists(exp.path("eval", f"{name}-predictions.npz"))}
    if "mrgen" not in preds or len(preds) < 2:
        return False
    volume = sorted(preds["mrgen"])[0]
    ref = preds["mrgen"][volume]["ref"]
    with_organs = [z for z in range(ref.shape[0]) if ref[z].any()]
    chosen = with_organs[:: max(1, len(with_organs) // n)][:n]
    items = []
    for z in chosen:
        image = preds["mrgen"][volume]["image"][z].astype(np.float32) / 255
        items.append({"image": image, "caption": f"{volume} slice {z}"})
        items.append({"image": image, "mask": ref[z], "caption": "ground truth"})
        for name in preds:
            items.append({"image": image, "mask": preds[name][volume]["pred"][z], "caption": f"{name} prediction"})
    if not items:
        return False
    contact_sheet(items, uri, columns=2 + len(preds), cell=128, caption_lines=2,
                  title=f"{exp.data_label} target-modality test slices: image | ground truth | " + " | ".join(preds))
    return True


def _trained_on(exp) -> dict[str, str]:
    data = exp.data_label
    return {n: TRAINED_ON[n].format(data=data) if exp.filtered or n != "mrgen" else
            "MRGen synthetic target-modality slices (unfiltered)" for n in exp.segmenters}


def report_json(exp, got: Outputs) -> dict[str, Any]:
    """report.json: every figure of the run (the sheets are added by :func:`write_report_folder`)."""
    evals, synthesis, calibration = got.evals, got.synthesis, got.calibration
    trained_on = _trained_on(exp)
    mean = {n: evals[n]["mean_dice"] for n in evals}
    ratio = (mean["mrgen"] / mean["source-only"]) if mean.get("source-only") and mean.get("mrgen") is not None else None
    per_volume = {n: ev["dice"]["per_volume"] for n, ev in evals.items() if len(ev["dice"]["per_volume"]) >= 2}
    spans, diffs = intervals(per_volume), differences(per_volume)
    calibrated = calibration.model_dump(mode="json") if calibration else None
    return {
        "out": exp.out, "config": exp.config.model_dump(mode="json"),
        "dice": {n: {"mean": ev["mean_dice"], "per_organ": ev["dice"]["per_organ"],
                     "per_volume": ev["dice"]["per_volume"],
                     "interval": spans.get(n), "training_slices": got.segmenters[n].get("training_cases"),
                     "trained_on": trained_on[n]}
                 for n, ev in evals.items()},
        "differences": diffs, "data": exp.data_label,
        "dice_ratio_mrgen_over_source_only": ratio, "goal": goal(mean, diffs),
        "generator": {"uri": exp.config.generator, "bundle": exp.bundle,
                      "manifest": {k: v for k, v in got.generator.items()
                                   if k in ("training", "evaluation", "bundle_hash", "organ_vocabulary")}},
        "filter": {"kind": exp.config.filter, "model": synthesis.get("filter_model"),
                   "thresholds": (calibrated or {}).get("thresholds"),
                   "pass_rate": (synthesis.get("totals") or {}).get("strict_pass_rate"),
                   "candidates_per_kept": (synthesis.get("totals") or {}).get("candidates_per_kept"),
                   "calibration": calibrated},
        "fit": {n: {"mean": ev["mean_dice"], "per_organ": ev["dice"]["per_organ"], "slices": ev["n_slices"]}
                for n, ev in got.fits.items()},
        "fid": got.fid, "mask_dependence": got.check.get("loss", {}), "mask_following": got.check.get("samples"),
        "mask_following_target": got.check.get("samples_target"),
        "synthesis": {k: synthesis.get(k) for k in ("totals", "rows", "scores_meaningful", "filter_model")},
        "synthesis_unfiltered": {k: got.unfiltered.get(k) for k in ("totals", "rows")} if got.unfiltered else None,
        "step_seconds": exp.results.get("step_seconds", {}),
        "budget": {"minutes": exp.config.minutes, **exp.results.get("budget", {}),
                   "trained": trained_amounts(got.generator, got.segmenters)},
        "paper": {"source_only": 10.5, "mrgen": 44.7, "note": "Table 3 averages, DSC %"},
    }


def write_sheets(exp, folder: str) -> dict[str, str]:
    """The report's contact sheets in ``folder``, by name → file (those whose inputs exist)."""
    sheets = {}
    try:
        _data_sheet(exp, storage.join(folder, "data.png"), exp.config.sheet_slices)
        sheets["data"] = "data.png"
    except (ValueError, FileNotFoundError) as exc:
        print(f"[experiment] data contact sheet skipped: {exc}", flush=True)
    if storage.exists(exp.mask_following_sheet):
        storage.write_bytes(storage.join(folder, "mask_following.png"), storage.read_bytes(exp.mask_following_sheet))
        sheets["mask_following"] = "mask_following.png"
    if _segmentation_sheet(exp, storage.join(folder, "segmentation.png"), exp.config.sheet_slices):
        sheets["segmentation"] = "segmentation.png"
    candidates = storage.join(exp.synthetic, "contact_sheet.png")
    if storage.exists(candidates):
        storage.write_bytes(storage.join(folder, "candidates.png"), storage.read_bytes(candidates))
        sheets["candidates"] = "candidates.png"
    return sheets


def fid_lines(fid: FidReport | dict, data: str) -> list[str]:
    """The FID / KID table: the filtered and (at equal count) the unfiltered synthetic set, each beside the source."""
    lines = ["| pair | images | FID | KID ± spread |", "|---|---|---|---|"]
    for label, block in (("synthetic", fid), ("unfiltered synthetic at equal count", fid.get("unfiltered"))):
        for pair, name in (("synthetic_vs_real_target", label), ("source_vs_real_target", f"{data} source")):
            if block and pair in block:
                kid, kid_sd = (block.get("kid") or {}).get(pair), (block.get("kid_std") or {}).get(pair)
                lines.append(f"| {name} vs {data} target | {block['n']['synthetic']} vs "
                             f"{block['n']['real_target']} | {block[pair]:.2f} | "
                             + ("-" if kid is None else f"{kid:.4f} ± {kid_sd:.4f}") + " |")
    return lines


def write_report_folder(exp) -> dict[str, Any]:
    """report.md, report.json and the sheets from what the steps wrote; returns report.json's content."""
    folder = exp.path("report")
    got = read_outputs(exp)
    result = report_json(exp, got)
    result["sheets"] = write_sheets(exp, folder)
    spans = {n: d["interval"] for n, d in result["dice"].items() if d["interval"]}
    table, fid_table = dice_table(got.evals, _trained_on(exp), spans), fid_lines(got.fid, exp.data_label)
    storage.write_text(storage.join(folder, "report.md"),
                       "\n".join(report_markdown(exp, got, result, table, fid_table)) + "\n")
    storage.write_text(storage.join(exp.out, *REPORT_JSON), json.dumps(result, indent=1, default=str))
    print("\n" + table + "\n" + "\n".join(differences_lines(result["differences"]))
          + "\n".join(fid_table) + f"\nreport: {storage.join(folder, 'report.md')}", flush=True)
    return result


def report_markdown(exp, got: Outputs, result: dict[str, Any], table: str, fid_table: list[str]) -> list[str]:
    """report.md's lines: the Dice ``table``, the differences, the fit, ``fid_table``, the controller, the filter,
    the budgets and the sheets."""
    names, fid, data, manifests = exp.segmenters, got.fid, exp.data_label, got.segmenters
    trained_on, ratio = _trained_on(exp), result["dice_ratio_mrgen_over_source_only"]
    if exp.trains_generator:
        generator = (f"trained in this run, train preset `{exp.config.train}` with "
                     f"{exp.config.train_overrides or 'no overrides'}")
        unconverged = "Small budgets train neither the generator nor the segmenters"
    else:
        generator = f"`{exp.bundle}`, trained beforehand (its manifest says how)"
        unconverged = "The budget does not train the segmenters"
    return [
        "# MRGen cross-modality experiment", "",
        f"Output: `{exp.out}`. Segmenters: nnU-Net v2 2d (preset `{exp.config.segment}`); test: the held-out "
        f"{data} target-modality volumes, Dice on stacked volumes, per organ averaged over volumes, then over organs "
        "(organs absent from reference and prediction are not scored); 95 % percentile bootstrap intervals over the "
        "test volumes." + (" The images are the embedded phantom's renderings, not scans." if data == "phantom"
                           else ""),
        "",
        f"## Dice (%) on {data} target-modality test volumes", "", table, "",
        f"MRGen / source-only mean Dice ratio: {ratio:.2f}" if ratio is not None else "MRGen / source-only ratio: n/a",
        "(paper, Table 3 average: 44.7 vs 10.5, ratio 4.3)"
        + (f"; gap to the oracle closed: {100 * result['goal']['gap_closed']:.0f} % (goal two thirds)"
           if "gap_closed" in result["goal"] else ""), "",
        *differences_lines(result["differences"]),
        *_fit_lines(got.fits, trained_on, data),
        "## FID and KID", "", *fid_table, "",
        f"Images: a synthetic set and the {data} source images at the same count, evenly spread (FID grows as the "
        f"sample shrinks), against {fid['n']['real_target']} {data} target images." if fid.get("n") else "",
        "KID: the unbiased squared MMD of the same features under the cubic polynomial kernel, whose expected value "
        f"does not depend on the count; mean ± standard deviation over {fid['kid_subsets']} random subsets of each "
        f"set, half the smaller set each ({fid['kid_subset_size']} images for the filtered set): the spread is that "
        "of half as many images, on the wide side." if fid.get("kid_subsets") else "",
        f"Features: `{fid.get('extractor', '-')}`"
        + (" (the standard FID Inception network)" if fid.get("comparable_with_published") else
           " — a random-init fallback, not comparable with published FIDs; both figures use the same network, so "
           "they compare with each other."), "",
        "## Mask controller", "",
        "Denoising loss of UNet + controller (fixed noise and timesteps) with each source slice's own mask, an empty "
        "condition and another slice's mask, and of the UNet alone; gain = 1 - own/other (0: the masks are ignored). "
        "Where `empty` lies near `own` and far below `UNet alone`, the controller mostly corrects the UNet whatever "
        f"the mask. Synthesis uses the `{exp.config.source_split}` masks; `test` masks were never seen in training.",
        "",
        "| masks | slices | own | empty | other | UNet alone | gain |", "|---|---|---|---|---|---|---|",
        *(f"| {split} | {c['slices']} | {c['mse_true']:.4f} | {c['mse_empty']:.4f} | {c['mse_shuffled']:.4f} | "
          f"{c.get('mse_unet', float('nan')):.4f} | {c['gain']:+.3f} |"
          for split, c in result["mask_dependence"].items()),
        "", *_following_lines(result["mask_following"]), *_target_following_lines(result["mask_following_target"]),
        *_filter_lines(exp, got.synthesis, got.calibration),
        "## Budgets", "",
        f"Generator: {generator}. Segmenters: preset `{exp.config.segment}` with "
        f"{exp.config.segment_overrides or 'no overrides'}; training slices: "
        + ", ".join(f"{n} {manifests[n].get('training_cases', '-')}" for n in names) + ". "
        f"{unconverged} to convergence: read the Dice figures as what this run measured, not as "
        "the paper's effect.", "",
        *_budget_lines(exp, result["budget"]["trained"]),
        "## Steps (seconds)", "",
        ", ".join(f"{k} {v:.0f}" for k, v in result["step_seconds"].items()) or "(all steps resumed)", "",
        *(f"![{k}]({v})" for k, v in result["sheets"].items()),
    ]
