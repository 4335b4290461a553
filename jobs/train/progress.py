"""A training run's progress, seen from the driver: rank 0 writes ``RUN/progress.json`` at each log interval and
the driver, blocked in ``TorchTrainer.fit``, redraws the console's progress bar from it (Ray Train hands the
driver no result before the run ends)."""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from mrgen.platform import storage
from mrgen.platform.console import current

FILE = "progress.json"


def write_progress(run_uri: str, progress: dict[str, Any]) -> None:
    storage.write_text(storage.join(run_uri, FILE), json.dumps(progress))


def read_progress(run_uri: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(storage.join(run_uri, FILE))
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def watch_progress(run_uri: str, run_id: str, label: str, every_s: float = 2.0):
    """While the body runs, the console (when a command has one) shows run ``run_id``'s steps of ``total``."""
    console = current()
    if console is None:
        yield
        return
    stop = threading.Event()

    def draw() -> None:
        progress = read_progress(run_uri)
        if progress and progress.get("run_id") == run_id:
            console.progress(label, progress["step"], progress["total"], f"loss={progress['loss']:.4f}")

    def watch() -> None:
        while not stop.wait(every_s):
            draw()

    thread = threading.Thread(target=watch, name="mrgen-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        draw()  # where the run ended (the bar's last state also when it ended between two looks)
