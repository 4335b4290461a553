"""Where an artefact came from: the code's git commit and the command that made it (recorded in manifests)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def code_version() -> dict[str, object]:
    """``{"commit": sha, "dirty": bool}`` of the checkout this package runs from; ``commit`` None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def command_line(argv: list[str] | None = None, shown: dict[str, str] | None = None) -> str:
    """This process's command as a shell line, with the program shown as ``mrgen`` when it is the CLI. ``shown``:
    flag → the value written in place of the one given (``{"--db": "D"}``: a machine's path replaced by a name that
    the record defines, so that the line reproduces the run elsewhere)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name == "mrgen" or argv[0].endswith("mrgen/cli/__main__.py")):
        argv[0] = "mrgen"
    for flag, value in (shown or {}).items():
        for i, word in enumerate(argv):
            if word.startswith(flag + "="):
                argv[i] = f"{flag}={value}"
            elif word == flag and i + 1 < len(argv):
                argv[i + 1] = value
    return shlex.join(argv)
