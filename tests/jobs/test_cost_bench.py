"""`mrgen bench cost`'s arithmetic on hand-made audits: early rejection's cut and false-reject rate, the equal-count
training sets, cost per kept slice, the Pareto front. (The command's end-to-end run is a benchmark: its figures are
in docs/results.md; tests/jobs/test_bench_defaults.py resolves its configs at the defaults.)"""
from __future__ import annotations

import json

import pytest

from mrgen.jobs.bench.cost_bench import (choose_cut, cost_bench_configs, cut_table, equal_count_sets, pareto,
                                         run_cost)


def _row(mask: str, index: int, fate: str, early: float | None = None, rows: int = 10, mean_iou: float = 0.5,
         organs: int = 2) -> dict:
    return {"mask_key": mask, "candidate_index": index, "fate": fate, "early_mean_iou": early, "denoiser_rows": rows,
            "mean_iou": mean_iou, "mean_conf": 0.5, "organ_scores": json.dumps([{}] * organs), "skip_reason": ""}


def test_false_reject_rate_and_the_chosen_cut():
    # early scores 0.1..0.8; the candidates at 0.3 and at 0.6 and above passed at the end
    audit = [_row("m", i, "kept" if e in (0.3, 0.6, 0.7, 0.8) else "rejected", early=e)
             for i, e in enumerate((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))]
    table = {round(r["cut"], 2): r for r in cut_table(audit, cuts=(0.25, 0.35, 0.55, 0.65))}
    assert table[0.25]["stopped_share"] == 2 / 8 and table[0.25]["false_reject_rate"] == 0.0
    assert table[0.35]["false_reject_rate"] == 1 / 3 and table[0.35]["passes_lost"] == 1 / 4
    assert table[0.55]["false_reject_rate"] == 1 / 5
    assert table[0.65]["false_reject_rate"] == 2 / 6
    # passes lost: 0, 1/4, 1/4, 2/4 of the four passing candidates
    assert choose_cut(list(table.values()), 0.0)["cut"] == 0.25
    assert choose_cut(list(table.values()), 0.3)["cut"] == 0.55
    assert choose_cut(list(table.values()), 0.5)["cut"] == 0.65
    assert choose_cut([table[0.35], table[0.55]], 0.2)["cut"] == 0.0  # the lowest cut loses too many: none


def test_equal_count_takes_the_fewest_kept_per_mask_best_first_over_shared_masks():
    def kept(mask, index, iou):
        return {"mask_key": mask, "candidate_index": index, "slice_id": f"{mask}-{index}", "mean_iou": iou,
                "mean_conf": 0.5}

    sets = equal_count_sets({"A": [kept("m1", 0, 0.5), kept("m1", 3, 0.9), kept("m2", 1, 0.7), kept("m3", 0, 0.6)],
                             "B": [kept("m1", 2, 0.8), kept("m2", 0, 0.4), kept("m2", 5, 0.6)]})
    assert sets == {"A": ["m1-3", "m2-1"], "B": ["m1-2", "m2-5"]}  # m3: B kept none; k = 1 on m1 and m2


def test_cost_per_kept_counts_rows_decodes_and_filter_calls():
    flops = {"row": 2e12, "decode": 1e12, "filter_embed": 3e12, "filter_decode": 1e12, "paper_row": 4e12,
             "paper_decode": 1e12, "sam2_large_embed": 10e12, "sam2_large_decode": 2e12}
    seconds = {"row": 0.1, "decode": 0.5, "filter_call": 1.0}
    audit = [_row("m", 0, "kept", early=0.6, rows=12), _row("m", 1, "stopped_early", early=0.1, rows=4),
             _row("m", 2, "passed_not_kept", early=0.7, rows=12), _row("m", 3, "kept", early=0.5, rows=12)]
    cost = run_cost(audit, flops, seconds)
    assert cost["kept"] == 2 and cost["candidates_finished"] == 3 and cost["candidates_stopped_early"] == 1
    assert cost["denoiser_rows_per_kept"] == 40 / 2
    decodes = calls = 3 + 4  # three finished candidates, four x̂₀ probes
    assert cost["generator_tflop_per_kept"] == pytest.approx((40 * 2 + decodes * 1) / 2)
    assert cost["filter_tflop_per_kept"] == pytest.approx(calls * (3 + 2 * 1) / 2)
    assert cost["paper"]["filter_tflop_per_kept"] == pytest.approx(calls * (10 + 2 * 2) / 2)
    assert cost["generator_s_per_kept"] == pytest.approx((40 * 0.1 + decodes * 0.5) / 2)
    assert cost["strict_pass_rate"] == 1.0
    assert run_cost([_row("m", 0, "rejected")], flops, seconds) == {"kept": 0}


def test_pareto_front():
    def entry(cost, dice):
        return {"kept": 1, "paper": {"generator_tflop_per_kept": cost}, "dice": {"value": dice}}

    assert pareto({"R0": entry(100, 0.50), "R1": entry(10, 0.52), "R2": entry(2, 0.49), "R3": entry(5, 0.40)}) == [
        "R1", "R2"]


def test_configs_refuse_unknown_recipes_and_probe_only_early_rejection():
    configs = cost_bench_configs(masks=8, recipes=("R0", "R1-early", "R2"))
    assert {"synthesis.R0", "synthesis.R1-early", "synthesis.R2", "probe.R1-early", "segment", "phantom"} <= set(
        configs)
    assert "probe.R0" not in configs and "probe.R2" not in configs
    r2 = configs["synthesis.R2"]  # a recipe's stage settings add to the bench's, key by key
    assert r2.generator.batch_size == 4 and r2.generator.pool_max == 2 and r2.sampling.denoiser_rows() == 6
    probe = configs["probe.R1-early"]
    assert probe.early_reject_below == 0 and probe.source_splits == ["test"]
    assert configs["synthesis.R0"].source_splits == ["train"] and configs["synthesis.R0"].max_masks == 8
    with pytest.raises(ValueError, match="unknown recipe"):
        cost_bench_configs(recipes=("R0", "R9"))
    with pytest.raises(ValueError, match="baseline"):
        cost_bench_configs(recipes=("R1", "R2"))
