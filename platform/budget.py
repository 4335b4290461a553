"""Wall-time budgets: how much of a run fits before its deadline, judged from what the run has done so far.

Training jobs do not stop mid-schedule when time runs out; they shorten the run early enough (fewer optimizer
steps, fewer iterations per epoch) that their learning-rate schedule still ends where it is meant to.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    """``seconds`` of wall time from ``start`` (time.monotonic), less what earlier attempts already spent."""

    seconds: float
    spent_before: float = 0.0
    start: float = field(default_factory=time.monotonic)

    @classmethod
    def minutes(cls, minutes: float | None, spent_before: float = 0.0) -> TimeBudget | None:
        return None if minutes is None else cls(minutes * 60.0, spent_before)

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


def units_that_fit(remaining_s: float, seconds_per_unit: float, lowest: int = 0) -> int:
    """Whole units of ``seconds_per_unit`` that fit in ``remaining_s`` (never below ``lowest``)."""
    if seconds_per_unit <= 0:
        raise ValueError(f"seconds_per_unit must be positive, got {seconds_per_unit}")
    return max(lowest, int(max(0.0, remaining_s) // seconds_per_unit))
