"""`mrgen train`'s progress bar: rank 0 writes the run's progress file, the driver's console draws it."""
from __future__ import annotations

import io
import time

from mrgen.jobs.train.progress import read_progress, watch_progress, write_progress
from mrgen.platform.console import Console


def test_the_console_draws_this_runs_progress_only(tmp_path):
    run, terminal = str(tmp_path / "unet"), io.StringIO()
    with Console(tmp_path / "train.log", stream=terminal):
        with watch_progress(run, "run-2", "train unet", every_s=0.02):
            write_progress(run, {"run_id": "run-1", "step": 3, "total": 10, "loss": 0.5})  # the resumed run's
            time.sleep(0.2)
            write_progress(run, {"run_id": "run-2", "step": 10, "total": 10, "loss": 0.25})
            time.sleep(0.2)
    shown = terminal.getvalue()
    assert "train unet [########################] 10/10  loss=0.2500" in shown and "3/10" not in shown
    assert read_progress(run)["step"] == 10


def test_without_a_console_nothing_watches(tmp_path):
    with watch_progress(str(tmp_path / "vae"), "run-1", "train vae", every_s=0.01):
        write_progress(str(tmp_path / "vae"), {"run_id": "run-1", "step": 1, "total": 2, "loss": 1.0})
    assert read_progress(str(tmp_path / "nowhere")) is None
