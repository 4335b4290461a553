"""`mrgen filter calibrate`: a scorer's thresholds from real annotated slices (jobs/filter/calibrate.py)."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("filter", help="the synthesis filter's scorer: calibrate its thresholds")
    sub = p.add_subparsers(dest="filter_command", metavar="ACTION", required=True)
    c = sub.add_parser("calibrate", help="thresholds from a scorer's scores of real slices against their own masks",
                       description="Score real annotated slices against their own masks and set each filter threshold "
                                   "at a quantile of its distribution; the file is what `mrgen synthesize "
                                   "--thresholds` "
                                   "and `mrgen serve --thresholds` take.")
    c.add_argument("--db", required=True, metavar="URI", help="MRGen-DB with annotated slices")
    c.add_argument("--scorer", choices=["medsam", "sam2"], default="medsam", help="scorer to calibrate")
    c.add_argument("--checkpoint", default=None,
                   help="scorer weights (sam2: required; medsam: default the shipped ones)")
    c.add_argument("--sam2-config", default="tiny", help="sam2 config name or alias (tiny, large, 2.0-large)")
    c.add_argument("--dataset", action="append", default=None, help="only these datasets (repeatable)")
    c.add_argument("--split", default="train", help="split of the slices scored (default train)")
    c.add_argument("--quantile", type=float, default=0.25, help="each threshold at this quantile (default 0.25)")
    c.add_argument("--limit", type=int, default=200, help="at most N slices, evenly spread (default 200)")
    c.add_argument("--out", required=True, metavar="URI", help="calibration file (JSON) to write")
    c.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mrgen.jobs.filter.calibrate import calibrate, describe, write_calibration
    from mrgen.models.scorers import ScorerSettings

    settings = ScorerSettings(config_name=args.sam2_config, checkpoint=args.checkpoint)
    try:
        result = calibrate(args.db, args.scorer, settings, quantile=args.quantile, limit=args.limit,
                           dataset=args.dataset, split=args.split)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"mrgen filter calibrate: {exc}", file=sys.stderr)
        return 2
    write_calibration(result, args.out)
    print(describe(result))
    print(f"written: {args.out}")
    return 0
