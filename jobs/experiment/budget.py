"""The experiment's wall-time budget (``experiment.minutes``), shared out as each budgeted step starts.

Only training has a budget of its own: the generator's three training loops and the two segmenters (trained side
by side). Every other step costs what it costs, so a budgeted step gets what is left of the run after the
seconds kept back for the steps still to come (``experiment.reserve_seconds``, measured on the slowest machine
seen). A step that ends early leaves its slack to the next budgeted one; one that overruns takes from it.
"""
from __future__ import annotations

from typing import Any

from mrgen.jobs.train.config import STAGES

# Steps after each budgeted one, whose reserved seconds it must leave.
AFTER_GENERATOR = ("check-controller", "calibrate-filter", "synthesize", "synthesize-unfiltered", "segmenter_startup",
                   "evaluate", "fid", "report")
AFTER_SEGMENTERS = ("evaluate", "fid", "report")
LEAST_MINUTES = 0.25  # a stage squeezed below this still runs its first log interval


class BudgetTooSmall(ValueError):
    pass


def _left(remaining_s: float, reserve: dict[str, float], steps: tuple[str, ...], what: str) -> float:
    kept = sum(reserve.get(s, 0.0) for s in steps)
    left = remaining_s - kept
    if left <= 0:
        raise BudgetTooSmall(f"experiment.minutes: {remaining_s:.0f} s left for {what}, but the steps after it are "
                             f"expected to take {kept:.0f} s (experiment.reserve_seconds); raise the budget")
    return left


def generator_minutes(config: Any, remaining_s: float, stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """``{stage: max_minutes}`` of the training loops still to run: the generator's share of what the later steps
    and the stages' own start-up (``stage_startup`` each) leave, split by ``stage_shares``. The share of the
    stages already trained (a resumed run) is not handed out again."""
    reserve = config.reserve_seconds
    left = _left(remaining_s - len(stages) * reserve.get("stage_startup", 0.0), reserve, AFTER_GENERATOR,
                 "the generator")
    todo = sum(config.stage_shares[s] for s in stages)
    share = config.generator_share * todo / sum(config.stage_shares.values())
    loops = left * share / (share + 1 - config.generator_share)
    return {s: max(LEAST_MINUTES, loops * config.stage_shares[s] / todo / 60) for s in stages}


def segmenter_minutes(config: Any, remaining_s: float) -> float:
    """``max_minutes`` of each segmenter's task (start-up included): all that evaluation, FID and report leave."""
    return max(LEAST_MINUTES, _left(remaining_s, config.reserve_seconds, AFTER_SEGMENTERS, "the segmenters") / 60)
