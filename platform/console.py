"""What a person sees while a long command runs: one line per step and a progress bar, the rest in a log file.

Inside ``with Console(log_file):`` this process's file descriptors 1 and 2 point at the log file, so everything
the frameworks print (Ray's worker output forwarded to the driver, Ray Train's reports, nnU-Net, warnings)
lands there; the console keeps the original terminal for :meth:`step`, :meth:`line` and the progress bar that
:class:`mrgen.platform.progress.Progress` feeds. ``verbose=True`` leaves the descriptors alone (everything live).
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import IO

_active: Console | None = None


def current() -> Console | None:
    """The console of the command now running, if any (progress lines go to its bar)."""
    return _active


def say(text: str) -> None:
    """A line for the person: on the running command's console (and its log), else printed."""
    if _active is not None:
        _active.line(text)
    else:
        print(text, flush=True)


class Console:
    def __init__(self, log_file: str | Path | None, verbose: bool = False, stream: IO | None = None):
        self.log_file = Path(log_file) if log_file else None
        self.verbose = verbose or self.log_file is None
        self._stream = stream
        self._saved: tuple[int, int] | None = None
        self._bar_open = False
        self._last_bar = 0.0

    def __enter__(self) -> Console:
        global _active
        sys.stdout.flush()
        sys.stderr.flush()
        if self._stream is None:
            try:
                self._stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
            except (AttributeError, OSError, io.UnsupportedOperation):  # stdout replaced in-process (pytest's capsys)
                self._stream = sys.stdout
        if not self.verbose:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._saved = (os.dup(1), os.dup(2))
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        self._end_bar()
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved is not None:
            for fd, saved in zip((1, 2), self._saved):
                os.dup2(saved, fd)
                os.close(saved)
            self._saved = None
        _active = None

    @property
    def tty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def line(self, text: str) -> None:
        """A line for the person (also written to the log)."""
        self._end_bar()
        self._stream.write(text + "\n")
        self._stream.flush()
        if self._saved is not None:  # descriptor 1 is the log file now
            os.write(1, (text + "\n").encode())

    def step(self, name: str, detail: str = "") -> None:
        self.line(f"== {name}" + (f": {detail}" if detail else ""))

    def progress(self, label: str, done: float, total: float | None, detail: str = "") -> None:
        """A progress bar (redrawn in place on a terminal; elsewhere a line at most every 30 s)."""
        now = time.monotonic()
        final = total is not None and done >= total
        if not self.tty and not final and now - self._last_bar < 30:
            return
        self._last_bar = now
        if total:
            filled = int(24 * min(1.0, done / total))
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {done:g}/{total:g}"
        else:
            bar = f"{done:g}"
        text = f"   {label} {bar}" + (f"  {detail}" if detail else "")
        if self.tty:
            self._stream.write("\r" + text[:150].ljust(150))
            self._bar_open = True
            if final:
                self._end_bar()
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self._stream.write("\n")
            self._stream.flush()
            self._bar_open = False
