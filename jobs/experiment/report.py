"""The experiment's report folder: report.md (tables + notes), report.json, and PNG contact sheets.

    OUT/report/report.md          Dice tables (target-modality test volumes; own training slices), FID, what ran
    OUT/report/report.json        the same numbers, machine-readable
    OUT/report/data.png           real source slices | synthetic target slices | real target test slices
    OUT/report/mask_following.png the check-controller step's same-seed samples with own and other masks
    OUT/report/segmentation.png   target test slices: image, ground truth, source-only and MRGen predictions
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from mrgen.platform import storage


def _json(uri: str) -> dict[str, Any] | None:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def dice_table(evals: dict[str, dict[str, Any]], trained_on: dict[str, str]) -> str:
    organs = next(iter(evals.values()))["dice"]["organs"] if evals else []
    head = "| segmenter | trained on | mean Dice (%) | " + " | ".join(organs) + " |"
    lines = [head, "|" + "---|" * (3 + len(organs))]
    for name, ev in evals.items():
        per = ev["dice"]["per_organ"]
        lines.append(f"| {name} | {trained_on.get(name, '')} | **{_pct(ev['mean_dice'])}** | "
                     + " | ".join(_pct(per.get(o)) for o in organs) + " |")
    return "\n".join(lines)


def _data_sheet(exp, uri: str, n: int) -> None:
    from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
    from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_DATASET
    from mrgen.datasets.store import read_table

    def pick(db: str, caption: str, **filters) -> list[dict]:
        rows = [r for r in read_table(db, **filters).sort_by("slice_id").to_pylist() if r["organs"]]
        rows = rows[:: max(1, len(rows) // n)][:n]
        items = items_from_rows(rows, caption="modality")
        for item in items:
            item["caption"] = f"{caption}: {item['caption']}"
        return items

    items = (pick(exp.db, "real source", dataset=SOURCE_DATASET, split=exp.config.source_split, has_mask=True)
             + pick(exp.synthetic, "synthetic", has_mask=True)
             + pick(exp.db, "real target (test)", dataset=TARGET_DATASET, split="test", has_mask=True))
    contact_sheet(items, uri, columns=n, cell=128, caption_lines=3,
                  title="rows: real source-modality | MRGen synthetic target-modality | real target-modality test")


def _following_lines(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    return [f"Samples (`mask_following.png`, {f['sampler']} {f['steps']} steps, guidance {f['guidance']}): at the "
            f"{f['organs']} organs of {f['slices']} {f['split']} masks, the organ contrast (inside minus a "
            f"{f['ring']}-pixel ring around) differs from the real slice's by {f['error_own']:.4f} in the sample drawn with "
            f"that mask and by {f['error_other']:.4f} in the same-seed sample drawn with another slice's mask: "
            f"following **{f['following']:+.3f}** (1 − own/other; 0: the samples ignore their masks). Ceiling set by "
            f"the autoencoder (the real slices' reconstructions scored the same way): {f['autoencoder_ceiling']:+.3f}.",
            ""]


def _fit_lines(fits: dict[str, dict[str, Any]], trained_on: dict[str, str]) -> list[str]:
    if not fits:
        return []
    slices = ", ".join(f"{n} {ev['n_slices']}" for n, ev in fits.items())
    return ["## Dice (%) on each segmenter's own training slices", "",
            f"Pooled over evenly spread training slices ({slices}). Low here means the segmenter did not learn "
            "what it was given (budget, or images that do not show their masks' organs); high here but low above "
            "means it learnt and did not transfer to the real target modality.", "",
            dice_table(fits, trained_on), ""]


def trained_amounts(exp, manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Steps each generator stage ran and iterations each segmenter ran (fewer than configured under a budget)."""
    from mrgen.jobs.experiment.run import train_config
    from mrgen.jobs.train.config import STAGES

    config = train_config(exp)
    steps = {}
    for stage in STAGES:
        history = _json(exp.path("generator", stage, "history.json")) or []
        steps[stage] = {"steps": history[-1]["step"] if history else None, "max_steps": config.stage(stage).max_steps}
    segmenters = {}
    for name, manifest in manifests.items():
        planned = manifest.get("config") or {}
        segmenters[name] = {"iterations": manifest.get("iterations"),
                            "max_iterations": planned.get("epochs", 0) * planned.get("iterations", 0) or None}
    return {"generator": steps, "segmenters": segmenters}


def _budget_lines(exp, trained: dict[str, Any]) -> list[str]:
    gen = ", ".join(f"{s} {t['steps']}" + (f" of {t['max_steps']}" if t["max_steps"] else "")
                    for s, t in trained["generator"].items())
    seg = ", ".join(f"{n} {t['iterations']}" + (f" of {t['max_iterations']}" if t["max_iterations"] else "")
                    for n, t in trained["segmenters"].items())
    budget = (f"Wall-time budget {exp.config.minutes:g} min: each training loop planned the steps that fit in its "
              f"share, so slower machines train less. " if exp.config.minutes else "")
    return [f"{budget}Steps trained: {gen}. Segmenter iterations: {seg}.", ""]


def _segmentation_sheet(exp, uri: str, n: int) -> bool:
    from mrgen.datasets.contact_sheet import contact_sheet
    from mrgen.jobs.segment.evaluate import load_predictions

    preds = {name: load_predictions(exp.path("eval", f"{name}-predictions.npz")) for name in ("source-only", "mrgen")
             if storage.exists(exp.path("eval", f"{name}-predictions.npz"))}
    if len(preds) < 2:
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
        for name in ("source-only", "mrgen"):
            items.append({"image": image, "mask": preds[name][volume]["pred"][z], "caption": f"{name} prediction"})
    if not items:
        return False
    contact_sheet(items, uri, columns=4, cell=128, caption_lines=2,
                  title="real target-modality test slices: image | ground truth | source-only | MRGen-trained")
    return True


def write_report_folder(exp) -> dict[str, Any]:
    from mrgen.jobs.experiment.run import SEGMENTERS

    folder = exp.path("report")
    evals = {n: ev for n in SEGMENTERS if (ev := _json(exp.evaluation(n)))}
    fits = {n: ev for n in SEGMENTERS if (ev := _json(exp.fit(n)))}
    fid = _json(exp.path("fid.json")) or {}
    mask_check = _json(exp.mask_check) or {}
    mask_loss, following = mask_check.get("loss", {}), mask_check.get("samples")
    synthesis = _json(storage.join(exp.synthetic, "report.json")) or {}
    trained_on = {"source-only": "real source-modality slices", "mrgen": "MRGen synthetic target-modality slices"}
    manifests = {n: _json(storage.join(exp.segmenter(n), "mrgen_segmenter.json")) or {} for n in SEGMENTERS}
    mean = {n: evals[n]["mean_dice"] for n in evals}
    ratio = (mean["mrgen"] / mean["source-only"]) if mean.get("source-only") and mean.get("mrgen") is not None else None
    result = {
        "out": exp.out, "config": exp.config.model_dump(mode="json"),
        "dice": {n: {"mean": ev["mean_dice"], "per_organ": ev["dice"]["per_organ"], "per_volume": ev["dice"]["per_volume"],
                     "training_slices": manifests[n].get("training_cases"), "trained_on": trained_on[n]}
                 for n, ev in evals.items()},
        "dice_ratio_mrgen_over_source_only": ratio,
        "fit": {n: {"mean": ev["mean_dice"], "per_organ": ev["dice"]["per_organ"], "slices": ev["n_slices"]}
                for n, ev in fits.items()},
        "fid": fid, "mask_dependence": mask_loss, "mask_following": following, "synthesis": {k: synthesis.get(k) for k in ("totals", "rows", "scores_meaningful", "filter_model")},
        "step_seconds": exp.results.get("step_seconds", {}),
        "budget": {"minutes": exp.config.minutes, **exp.results.get("budget", {}),
                   "trained": trained_amounts(exp, manifests)},
        "paper": {"source_only": 10.5, "mrgen": 44.7, "note": "Table 3 averages, DSC %"},
    }
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
    result["sheets"] = sheets
    table = dice_table(evals, trained_on)
    fid_lines = ["| pair | FID |", "|---|---|"]
    if fid:
        fid_lines += [f"| synthetic vs real target | {fid['synthetic_vs_real_target']:.2f} |",
                      f"| real source vs real target | {fid['source_vs_real_target']:.2f} |"]
    totals = synthesis.get("totals") or {}
    md = [
        "# MRGen cross-modality experiment", "",
        f"Output: `{exp.out}`. Segmenters: nnU-Net v2 2d (preset `{exp.config.segment}`); test: the held-out real "
        "target-modality volumes, Dice on stacked volumes, per organ averaged over volumes, then over organs "
        "(organs absent from reference and prediction are not scored).", "",
        "## Dice (%) on real target-modality test volumes", "", table, "",
        f"MRGen / source-only mean Dice ratio: {ratio:.2f}" if ratio is not None else "MRGen / source-only ratio: n/a",
        f"(paper, Table 3 average: 44.7 vs 10.5, ratio 4.3)", "",
        *_fit_lines(fits, trained_on),
        "## FID", "", *fid_lines, "",
        f"Features: `{fid.get('extractor', '-')}`"
        + ("" if fid.get("comparable_with_published") else " — not comparable with published FIDs (no Inception "
           "weights offline); both figures use the same network, so they compare with each other."), "",
        "## Mask controller", "",
        "Denoising loss of UNet + controller (fixed noise and timesteps) with each source slice's own mask, an empty "
        "condition and another slice's mask, and of the UNet alone; gain = 1 - own/other (0: the masks are ignored). "
        "Where `empty` lies near `own` and far below `UNet alone`, the controller mostly corrects the UNet whatever "
        f"the mask. Synthesis uses the `{exp.config.source_split}` masks; `test` masks were never seen in training.", "",
        "| masks | slices | own | empty | other | UNet alone | gain |", "|---|---|---|---|---|---|---|",
        *(f"| {split} | {c['slices']} | {c['mse_true']:.4f} | {c['mse_empty']:.4f} | {c['mse_shuffled']:.4f} | "
          f"{c.get('mse_unet', float('nan')):.4f} | {c['gain']:+.3f} |" for split, c in mask_loss.items()), "",
        *_following_lines(following),
        "## Synthesis", "",
        f"{totals.get('masks', '-')} masks, {totals.get('candidates_generated', '-')} candidates, "
        f"{totals.get('candidates_kept', '-')} kept; filter `{synthesis.get('filter_model', '-')}`"
        + ("" if synthesis.get("scores_meaningful") else " — UNTRAINED or no filter: its scores mean nothing, "
           "kept candidates are effectively unfiltered"), "",
        "## Budgets", "",
        f"Generator: train preset `{exp.config.train}` with {exp.config.train_overrides or 'no overrides'}. "
        f"Segmenters: preset `{exp.config.segment}` with {exp.config.segment_overrides or 'no overrides'}; "
        "training slices: " + ", ".join(f"{n} {manifests[n].get('training_cases', '-')}" for n in SEGMENTERS) + ". "
        "Small budgets train neither the generator nor the segmenters to convergence: read the Dice figures as "
        "what this run measured, not as the paper's effect.", "",
        *_budget_lines(exp, result["budget"]["trained"]),
        "## Steps (seconds)", "",
        ", ".join(f"{k} {v:.0f}" for k, v in result["step_seconds"].items()) or "(all steps resumed)", "",
        *(f"![{k}]({v})" for k, v in sheets.items()),
    ]
    storage.write_text(storage.join(folder, "report.md"), "\n".join(md) + "\n")
    storage.write_text(storage.join(folder, "report.json"), json.dumps(result, indent=1, default=str))
    print("\n" + table + "\n" + "\n".join(fid_lines) + f"\nreport: {storage.join(folder, 'report.md')}", flush=True)
    return result
