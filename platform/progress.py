"""Visible progress for long work: a line per step to stderr, at most every ``interval`` seconds, and the
progress bar of the running command's console (``platform.console``) when there is one."""
from __future__ import annotations

import sys
import time

from mrgen.platform.console import current


class Progress:
    def __init__(self, label: str, total: int | None = None, interval: float = 2.0, stream=None):
        self.label, self.total, self.interval = label, total, interval
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, **fields) -> None:
        self.done += n
        console = current()
        if console is not None:
            console.progress(self.label, self.done, self.total,
                             " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in fields.items()))
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total is not None and self.done >= self.total):
            self._last = now
            self._print(fields)

    def _print(self, fields) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        extra = "".join(f" {k}={v:.4g}" if isinstance(v, float) else f" {k}={v}" for k, v in fields.items())
        print(f"[{self.label}] {self.done}{of} ({rate:.1f}/s, {elapsed:.0f}s){extra}", file=self.stream, flush=True)

    def close(self, **fields) -> None:
        self._print(fields)
