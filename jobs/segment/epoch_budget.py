"""Fit nnU-Net's remaining epochs into a wall-time budget by shortening them, not by dropping any.

After each epoch, the next epochs' training iterations are set from that epoch's time per iteration and its fixed
part (validation, logging, checkpoints), so the rest of the run ends by the budget's end. The number of epochs
stays: nnU-Net's poly learning rate is scheduled per epoch and so still decays to its end.
"""
from __future__ import annotations

import time
from typing import Any

from mrgen.platform.budget import TimeBudget, units_that_fit

PROBE_ITERATIONS = 20
HOOKS = ("on_epoch_start", "on_train_epoch_start", "on_train_epoch_end", "on_epoch_end")


class EpochBudget:
    """Wraps the four epoch hooks of an ``nnUNetTrainer`` instance; ``iterations`` lists each epoch's count."""

    def __init__(self, trainer: Any, budget: TimeBudget, most: int):
        self.trainer, self.budget, self.most = trainer, budget, most
        self.iterations: list[int] = []
        self._at: dict[str, float] = {}
        # the first epoch measures the time per iteration: a short one, so that a small budget is not spent on it
        trainer.num_iterations_per_epoch = min(most, PROBE_ITERATIONS)
        for hook in HOOKS:
            setattr(trainer, hook, self._timed(hook, getattr(trainer, hook)))

    def _timed(self, hook: str, original):
        def call(*args):
            if hook.endswith("_start"):
                self._at[hook] = time.monotonic()
            result = original(*args)
            if hook.endswith("_end"):
                self._at[hook] = time.monotonic()
            if hook == "on_epoch_end":
                self._replan()
            return result
        return call

    def _replan(self) -> None:
        trainer, at = self.trainer, self._at
        done = trainer.num_iterations_per_epoch
        self.iterations.append(done)
        epochs_left = trainer.num_epochs - trainer.current_epoch  # nnU-Net counted the finished epoch already
        if epochs_left <= 0:
            return
        train_s = at["on_train_epoch_end"] - at["on_train_epoch_start"]
        fixed_s = max(0.0, at["on_epoch_end"] - at["on_epoch_start"] - train_s)
        # one more fixed part is kept back for the end of the run (final checkpoint)
        per_epoch = (self.budget.remaining() - fixed_s) / epochs_left - fixed_s
        trainer.num_iterations_per_epoch = min(self.most, units_that_fit(per_epoch, train_s / done, lowest=1))
