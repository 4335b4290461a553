"""`mrgen report OUT1 OUT2`: runs (seeds) summarised from their report.json files, mean ± sd and pooled intervals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mrgen.cli.main import main

VOLUMES = [f"phantom-tgt/vol{v:03d}" for v in range(100, 124)]


def _report(folder, seed: int, gain: float) -> str:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).uniform(0.1, 0.3, len(VOLUMES))
    means = {"source-only": 0.0, "mrgen": gain, "oracle": 0.6}
    dice = {}
    for name, shift in means.items():
        scores = np.clip(base + shift + rng.normal(0, 0.03, len(VOLUMES)), 0, 1)
        per_volume = {v: {"liver": float(s), "spleen": float(s) / 2} for v, s in zip(VOLUMES, scores)}
        dice[name] = {"mean": float(np.mean(scores) * 0.75), "per_volume": per_volume}
    from mrgen.jobs.experiment.compare import differences, goal

    diffs = differences({n: d["per_volume"] for n, d in dice.items()})
    out = folder / f"seed{seed}"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.json").write_text(json.dumps({
        "config": {"seed": seed}, "data": "phantom", "dice": dice, "differences": diffs,
        "goal": goal({n: d["mean"] for n, d in dice.items()}, diffs)}))
    return str(out)


def test_report_summarises_seeds(tmp_path, capsys):
    outs = [_report(tmp_path, seed, gain) for seed, gain in ((0, 0.3), (1, 0.35), (2, 0.4))]
    assert main(["report", *outs, "--out", str(tmp_path / "summary")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary" / "seeds.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [0, 1, 2] and "mean ± sd" in printed
    across = summary["across_seeds"]["differences"]["mrgen_minus_source_only"]
    assert across["n"] == 3 and across["sd"] > 0
    pooled = summary["pooled"]["differences"]["mrgen_minus_source_only"]
    assert pooled["low"] < across["mean"] < pooled["high"] and pooled["low"] > 0.2
    assert summary["every_seed_above_source_only"] is True
    assert (tmp_path / "summary" / "seeds.md").read_text().count("\n| ") == 6  # head, rule, 3 seeds, mean, pooled


def test_report_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "not a finished `mrgen demo` output" in capsys.readouterr().err


def test_demo_seeds_flag_is_checked_before_anything_runs(tmp_path, capsys):
    for bad in ("0,0", "a,1", "-1"):
        with pytest.raises(SystemExit):
            main(["demo", "--out", str(tmp_path / "x"), "--seeds", bad])
        assert "--seeds" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--seeds", "0,1", "--seed", "3"]) == 1
    assert "drop --seed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
