"""`mrgen report OUT1 OUT2 ...`: several finished experiments (seeds) in one table, with pooled intervals."""
from __future__ import annotations

import argparse

from mrgen.cli.common import EXIT_CONFIG, CliError, print_json


def cmd_report(args: argparse.Namespace) -> int:
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.jobs.experiment.seeds import summarise_runs, summary_markdown, write_summary

    try:
        summary = summarise_runs(args.runs)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    if args.out:
        md, js = write_summary(summary, args.out)
        print(f"wrote {md} and {js}")
    if args.json:
        print_json(summary)
    else:
        print(summary_markdown(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="summarise several `mrgen demo` runs (seeds): mean ± sd and pooled "
                                             "95 %% intervals",
                              description="Reads each OUT/report/report.json and prints one row per run (mean Dice "
                                          "per segmenter, every difference with its paired 95 % bootstrap interval "
                                          "over the test volumes, the share of the gap to the oracle closed), their "
                                          "mean ± sd, and intervals pooled over the runs (per-volume Dice averaged "
                                          "over the seeds). The runs must share their test volumes.")
    p.add_argument("runs", nargs="+", metavar="OUT", help="a finished `mrgen demo --out OUT`")
    p.add_argument("--out", default=None, help="also write seeds.md and seeds.json into this folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_report)
