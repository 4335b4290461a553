"""Wall-time budgets: the arithmetic that shares out the experiment's minutes and fits nnU-Net's epochs into a
task's budget. (The budgets acting on real runs: tests/train/test_train_budget.py, the nnU-Net fixture of
test_segment_nnunet.py and the quick end-to-end experiment.)"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mrgen.jobs.experiment.budget import BudgetTooSmall, generator_minutes, segmenter_minutes
from mrgen.jobs.experiment.config import ExperimentConfig
from mrgen.jobs.segment.epoch_budget import PROBE_ITERATIONS, EpochBudget
from mrgen.platform.budget import TimeBudget, units_that_fit


def test_units_that_fit_and_time_budget():
    assert units_that_fit(10.0, 3.0) == 3 and units_that_fit(-5.0, 3.0) == 0 and units_that_fit(1.0, 3.0, lowest=1) == 1
    with pytest.raises(ValueError):
        units_that_fit(10.0, 0.0)
    budget = TimeBudget(60.0, spent_before=20.0)
    assert 39.0 < budget.remaining() <= 40.0
    assert TimeBudget.minutes(None) is None and TimeBudget.minutes(2).seconds == 120.0


def test_generator_gets_its_share_of_what_the_later_steps_leave():
    config = ExperimentConfig.from_preset("default").with_overrides({
        "reserve_seconds": {"stage_startup": 10.0, "synthesize": 100.0, "evaluate": 50.0},
        "generator_share": 0.5, "stage_shares": {"vae": 1.0, "unet": 2.0, "controlnet": 1.0}})
    minutes = generator_minutes(config, 1030.0)
    # 1030 - 3 x 10 start-up - 150 reserved = 850 s; half to the generator: 425 s split 1:2:1
    assert minutes == pytest.approx({"vae": 425 / 4 / 60, "unet": 425 / 2 / 60, "controlnet": 425 / 4 / 60})
    # a resumed run: the autoencoder's share is not handed out again; the rest keep their ratio to the segmenters
    resumed = generator_minutes(config, 1020.0, ("unet", "controlnet"))
    left = 1020 - 2 * 10 - 150
    loops = left * 0.375 / (0.375 + 0.5)
    assert resumed == pytest.approx({"unet": loops * 2 / 3 / 60, "controlnet": loops / 3 / 60})
    # the segmenters get all that evaluation, FID and report leave
    assert segmenter_minutes(config, 350.0) == pytest.approx(300 / 60)
    with pytest.raises(BudgetTooSmall, match="reserve_seconds"):
        generator_minutes(config, 150.0)


def test_stage_shares_must_name_every_stage():
    from mrgen.platform.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="stage_shares"):
        ExperimentConfig.from_preset("default").with_overrides({"stage_shares": {"vae": 1.0}})


def _epoch(budget: EpochBudget, train_s: float, fixed_s: float) -> None:
    """One finished epoch as nnU-Net reports it: the hooks' times set, then the epoch counted and replanned."""
    now = time.monotonic()
    budget._at.update(on_epoch_start=now - train_s - fixed_s, on_train_epoch_start=now - train_s - fixed_s,
                      on_train_epoch_end=now - fixed_s, on_epoch_end=now)
    budget.trainer.current_epoch += 1
    budget._replan()


def test_epochs_shortened_so_the_rest_fits():
    trainer = SimpleNamespace(num_epochs=10, current_epoch=1, num_iterations_per_epoch=50)
    for hook in ("on_epoch_start", "on_train_epoch_start", "on_train_epoch_end", "on_epoch_end"):
        setattr(trainer, hook, lambda *a: None)
    fitted = EpochBudget(trainer, TimeBudget(100.0), most=50)
    assert trainer.num_iterations_per_epoch == PROBE_ITERATIONS < 50  # a short first epoch measures the pace
    trainer.num_iterations_per_epoch = 50
    _epoch(fitted, train_s=10.0, fixed_s=3.0)  # 0.2 s an iteration; 8 epochs left
    # (100 - 3 kept for the end) / 8 - 3 fixed = 9.1 s of training an epoch = 45 iterations
    assert trainer.num_iterations_per_epoch == 45 and fitted.iterations == [50]
    fitted.budget = TimeBudget(10_000.0)
    _epoch(fitted, train_s=9.0, fixed_s=3.0)
    assert trainer.num_iterations_per_epoch == 50  # never above the configured iterations
    fitted.budget = TimeBudget(1.0)
    _epoch(fitted, train_s=10.0, fixed_s=3.0)
    assert trainer.num_iterations_per_epoch == 1 and fitted.iterations == [50, 45, 50]  # out of time: at least 1


def test_report_budget_line_counts_the_runs_a_warm_started_stage_fine_tuned(tmp_path):
    import json

    from mrgen.jobs.experiment.report import _budget_lines, trained_amounts
    from mrgen.models.manifest import MANIFEST, read_manifest

    first = {"steps": 100, "max_steps": 100}
    chain = {"steps": 30, "max_steps": 40, "warm_start_from": {"steps": 20, "max_steps": 20, "warm_start_from": first}}
    stages = {"controlnet": chain, "unet": {"steps": 50, "max_steps": 50}}
    (tmp_path / MANIFEST).write_text(json.dumps({"training": {"stages": stages}}))
    exp = SimpleNamespace(bundle=str(tmp_path), config=SimpleNamespace(minutes=None, generator="embedded"),
                          trains_generator=False)
    trained = trained_amounts(read_manifest(str(tmp_path)), {})
    assert list(trained["generator"]) == ["unet", "controlnet"]  # pipeline order
    line = _budget_lines(exp, trained)[0]
    assert "unet 50 of 50, controlnet 30 of 40 (fine-tuning earlier runs of 20 + 100 steps)" in line, line
