"""The console of a long command: what a person reads on the terminal, everything else in the log file."""
from __future__ import annotations

import io
import subprocess

from mrgen.platform.console import Console
from mrgen.platform.progress import Progress


def test_framework_output_goes_to_the_log_and_the_persons_lines_to_both(tmp_path):
    log, terminal = tmp_path / "logs" / "job.log", io.StringIO()
    with Console(log, stream=terminal) as console:
        console.step("[1/2] build")
        subprocess.run(["echo", "framework chatter"], check=True)  # a worker process writing to descriptor 1
        progress = Progress("volumes", total=2)
        progress.update(2)
    subprocess.run(["echo", "after the console"], check=True)
    shown, logged = terminal.getvalue(), log.read_text()
    assert "== [1/2] build" in shown and "framework chatter" not in shown
    assert "volumes [########################] 2/2" in shown  # the finished bar, also when not a terminal
    assert "== [1/2] build" in logged and "framework chatter" in logged and "after the console" not in logged


def test_verbose_leaves_the_output_live(tmp_path, capfd):
    with Console(tmp_path / "job.log", verbose=True, stream=io.StringIO()):
        subprocess.run(["echo", "framework chatter"], check=True)
    assert "framework chatter" in capfd.readouterr().out and not (tmp_path / "job.log").exists()
