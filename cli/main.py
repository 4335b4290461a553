"""`mrgen`: one command, a subcommand per job. Each `cli/<group>.py` adds its own subparsers.

This is the only code that reaches both `jobs` and `serving`; it parses flags and calls their library functions
(`run_synthesis`, `run_training`, ...), printing results and turning errors into exit codes.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from mrgen.cli.common import json_stdout

# Subcommand modules, each with `register(subparsers)`; a handler is stored as `func` on the namespace.
GROUPS = ["db", "train", "eval", "filter", "synthesize", "sample", "export", "segment", "serve", "generate",
          "demo", "report", "bench", "submit"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrgen", description="MRGen Platform: MRI data engine on Ray")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        try:
            module = importlib.import_module(f"mrgen.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mrgen.cli.{group}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        with json_stdout(getattr(args, "json", False)):
            result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
