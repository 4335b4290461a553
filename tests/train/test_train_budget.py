"""A stage under a wall-time budget, through Ray Train + DeepSpeed on 2 CPU workers: it plans fewer steps than
max_steps, both ranks stop at the same step, and the learning-rate schedule still ends at its floor."""
from __future__ import annotations

import pytest

from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.run import run_training

pytestmark = pytest.mark.timeout(900)


def test_budgeted_stage_plans_fewer_steps_and_ends_its_schedule(tiny_db, tmp_path):
    budget_s = 30.0
    config = TrainConfig.load("tiny", [
        "num_workers=2", "vae.max_steps=5000", f"vae.max_minutes={budget_s / 60}", "vae.warmup_steps=2",
        "log_every=5", "checkpoint_every=5000", "sample_every=0", "sample_count=2", "sample_steps=2"])
    result = run_training(config, tiny_db, str(tmp_path / "out"), "vae")
    state = result.train_state

    assert 10 < result.steps < 5000  # replanned more than once
    assert state["plan"]["steps"] == result.steps == result.history[-1]["step"]
    peak = config.vae.lr
    assert result.history[0]["lr"] > 0.5 * peak  # a 5000-step cosine would still be near its peak here,
    # the planned one has decayed to (near) its floor, 0: the last replan may still move the end by a few steps
    assert result.history[-1]["lr"] < 0.05 * peak
    # the loop (from its first step; start-up is not counted) kept to its budget: it replans every 5 steps
    assert state["plan"]["train_seconds"] < 1.5 * budget_s
