"""`mrgen`: one command, a subcommand per job. Each `cli/<group>.py` adds its own subparsers.

This is the only code that reaches both `jobs` and `serving`; it parses flags and calls their library functions
(`run_synthesis`, `run_training`, ...), printing results. A command that cannot go on raises ``CliError``
(cli/common.py), which :func:`main` prints once and turns into the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from mrgen.cli.common import CliError, json_stdout

# Subcommand modules, each with `register(subparsers)`; a handler is stored as `func` on the namespace.
GROUPS = ["db", "train", "eval", "filter", "synthesize", "sample", "export", "segment", "serve", "generate",
          "demo", "report", "bench", "submit"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every group's subcommands, or only group ``only``'s (what a command line naming it needs: the others' imports,
    torch among them, cost seconds that `mrgen db info` should not pay)."""
    parser = argparse.ArgumentParser(prog="mrgen", description="MRGen Platform: MRI data engine on Ray")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS if only is None else [only]:
        importlib.import_module(f"mrgen.cli.{group}").register(sub)  # a group that fails to import is a broken install
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command stores its name (``mrgen eval ae``) as ``cli_command``; the innermost given wins."""
    parser.set_defaults(cli_command=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _name_commands(subparser)


def main(argv: list[str] | None = None) -> int:
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and argv[0] in GROUPS else None).parse_args(argv)
    try:
        with json_stdout(getattr(args, "json", False)):
            result = args.func(args)
    except CliError as exc:
        print(f"{exc.command or args.cli_command}: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
