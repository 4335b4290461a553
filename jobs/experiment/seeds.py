"""Several runs of the experiment (seeds) in one table: `mrgen report OUT1 OUT2 ...` and `mrgen demo --seeds`.

Per run: each segmenter's mean Dice and every stated difference with its paired interval (from the run's report).
Across runs: mean ± sd over seeds, and pooled intervals: each segmenter's per-volume Dice averaged over the seeds,
then bootstrapped over the test volumes (an interval for the seeds' average segmenter on these volumes; the sd
beside it says how much one seed moves).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any

from mrgen.jobs.experiment.compare import DIFFERENCES, differences, goal, interval_text, intervals
from mrgen.jobs.experiment.report import load_report
from mrgen.models.metrics.bootstrap import seed_average
from mrgen.platform import storage


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    kept = [v for v in values if v is not None]
    return {"mean": statistics.fmean(kept) if kept else None,
            "sd": statistics.stdev(kept) if len(kept) >= 2 else None, "n": len(kept)}


def summarise_runs(outs: Sequence[str]) -> dict[str, Any]:
    """The multi-seed summary of the runs under ``outs`` (each a finished experiment's OUT)."""
    reports = [load_report(out) for out in outs]
    names = [n for n in reports[0]["dice"] if all(n in r["dice"] for r in reports)]
    runs = []
    for out, r in zip(outs, reports):
        runs.append({"out": out, "seed": r["config"].get("seed"), "data": r.get("data"),
                     "mean": {n: r["dice"][n]["mean"] for n in names},
                     "differences": r.get("differences") or {}, "goal": r.get("goal") or {}})
    pooled_volumes = {n: seed_average([r["dice"][n]["per_volume"] for r in reports]) for n in names}
    pooled_diffs = differences(pooled_volumes)
    pooled_mean = {n: s["mean"]["value"] for n, s in intervals(pooled_volumes).items()}
    return {
        "runs": runs, "segmenters": names,
        "across_seeds": {"mean": {n: _spread([run["mean"][n] for run in runs]) for n in names},
                         "differences": {key: _spread([(run["differences"].get(key) or {}).get("value")
                                                       for run in runs]) for key, *_ in DIFFERENCES},
                         "gap_closed": _spread([run["goal"].get("gap_closed") for run in runs])},
        "pooled": {"intervals": intervals(pooled_volumes), "differences": pooled_diffs,
                   "goal": goal(pooled_mean, pooled_diffs)},
        "every_seed_above_source_only": all(run["goal"].get("interval_above_source_only") for run in runs),
    }


def _pm(spread: dict[str, float | None], scale: float = 100, signed: bool = False) -> str:
    if spread["mean"] is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return fmt.format(scale * spread["mean"]) + (f" ± {scale * spread['sd']:.1f}" if spread["sd"] is not None else "")


def summary_markdown(summary: dict[str, Any]) -> str:
    names = summary["segmenters"]
    keys = [(key, label) for key, label, a, b in DIFFERENCES if a in names and b in names]
    head = "| seed | " + " | ".join(names) + " | " + " | ".join(label for _, label in keys) + " | gap closed |"
    lines = [head, "|" + "---|" * (2 + len(names) + len(keys))]
    for run in summary["runs"]:
        gap = run["goal"].get("gap_closed")
        lines.append(f"| {run['seed']} | " + " | ".join(f"{100 * run['mean'][n]:.1f}" if run["mean"][n] is not None
                                                        else "-" for n in names)
                     + " | " + " | ".join(interval_text(run["differences"][k], signed=True)
                                          if k in run["differences"] else "-" for k, _ in keys)
                     + f" | {'-' if gap is None else f'{100 * gap:.0f} %'} |")
    across = summary["across_seeds"]
    lines.append("| mean ± sd | " + " | ".join(_pm(across["mean"][n]) for n in names) + " | "
                 + " | ".join(_pm(across["differences"][k], signed=True) for k, _ in keys)
                 + f" | {_pm(across['gap_closed'])} % |")
    pooled = summary["pooled"]
    lines.append("| pooled [95 %] | " + " | ".join(interval_text(pooled["intervals"][n]["mean"]) for n in names)
                 + " | " + " | ".join(interval_text(pooled["differences"][k], signed=True) for k, _ in keys)
                 + f" | {100 * pooled['goal'].get('gap_closed', float('nan')):.0f} % |")
    data = {run["data"] for run in summary["runs"]}
    note = (f"Mean Dice (%) on the {'/'.join(sorted(d for d in data if d))} target test volumes; differences with "
            "their paired 95 % bootstrap interval over the volumes; pooled: per-volume Dice averaged over the seeds.")
    return note + "\n\n" + "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], folder: str) -> tuple[str, str]:
    md, js = storage.join(folder, "seeds.md"), storage.join(folder, "seeds.json")
    storage.write_text(md, summary_markdown(summary))
    storage.write_text(js, json.dumps(summary, indent=1, default=str))
    return md, js
