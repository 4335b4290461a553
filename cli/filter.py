"""`mrgen filter calibrate`: a scorer's thresholds from real annotated slices (jobs/filter/calibrate.py); and the filter
flags every command that filters or calibrates takes (`mrgen synthesize`, `mrgen serve`, `mrgen filter calibrate`)."""
from __future__ import annotations

import argparse

from mrgen.cli.common import add_config_flags, add_settings_flags, input_errors, load_config, settings_flags
from mrgen.jobs.filter.config import CalibrateConfig
from mrgen.models.scorers import FilterSettings
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run

# The one set of filter flags: a key of the config's `filter` section → its flag, then older spellings that still work
# (`mrgen synthesize` took --sam2-* for either scorer, `mrgen filter calibrate` --scorer and --checkpoint)
FILTER_FLAGS = {"kind": ("--filter", "--scorer"),
                "scorer.checkpoint": ("--scorer-checkpoint", "--sam2-checkpoint", "--checkpoint"),
                "scorer.config_name": ("--scorer-config", "--sam2-config"),
                "scorer.image_size": ("--scorer-image-size", "--sam2-image-size"),
                "scorer.prompt": ("--scorer-prompt", "--sam2-prompt"),
                "scorer.multimask": ("--scorer-multimask", "--sam2-multimask"),
                "scorer.random": ("--scorer-random", "--sam2-random"),
                "scorer.embed_batch": ("--scorer-embed-batch",),
                "rule": ("--rule",),
                "thresholds_file": ("--thresholds",)}


def add_filter_flags(parser: argparse.ArgumentParser, section: type, omit: tuple[str, ...] = ()) -> None:
    """The filter flags of the command whose config's ``filter`` section is a ``section`` (``FilterSettings`` or
    the service's), less the keys in ``omit``."""
    group = parser.add_argument_group("filter", "the quality filter: the config's filter section")
    add_settings_flags(group, section, _flags(omit))


def filter_flags(args: argparse.Namespace, section: type, omit: tuple[str, ...] = ()) -> dict:
    """The filter flags given, as config keys (``filter.scorer.checkpoint`` ...) → value (None: not given)."""
    return settings_flags(args, section, "filter.", _flags(omit))


def _flags(omit: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {key: names for key, names in FILTER_FLAGS.items() if key not in omit}


def register(subparsers) -> None:
    p = subparsers.add_parser("filter", help="the synthesis filter's scorer: calibrate its thresholds")
    sub = p.add_subparsers(dest="filter_command", metavar="ACTION", required=True)
    c = sub.add_parser("calibrate", help="thresholds from a scorer's scores of real slices against their own masks",
                       description="Score real annotated slices against their own masks and set each filter threshold "
                                   "at a quantile of its distribution; the file is what `mrgen synthesize "
                                   "--thresholds` and `mrgen serve --thresholds` take. The scorer is configured as "
                                   "theirs (the filter section; default medsam).")
    c.add_argument("--db", required=True, metavar="URI", help="MRGen-DB with annotated slices")
    add_filter_flags(c, FilterSettings, omit=("thresholds_file",))
    c.add_argument("--dataset", action="append", default=None, help="only these datasets (repeatable)")
    c.add_argument("--split", default=None, help="split of the slices scored (default train)")
    c.add_argument("--quantile", type=float, default=None, help="each threshold at this quantile (default 0.25)")
    c.add_argument("--limit", type=int, default=None, help="at most N slices, evenly spread (default 200)")
    c.add_argument("--out", required=True, metavar="URI", help="calibration file (JSON) to write")
    add_config_flags(c, example="filter.scorer.embed_batch=4", ray_address=False)
    c.set_defaults(func=cmd_calibrate)


def calibrate_config(args: argparse.Namespace) -> CalibrateConfig:
    """The `CalibrateConfig` of these flags: --config and --set, then the explicit flags."""
    return load_config(CalibrateConfig, args, {
        "dataset": args.dataset, "split": args.split, "quantile": args.quantile, "limit": args.limit,
        **filter_flags(args, FilterSettings, omit=("thresholds_file",))})


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mrgen.jobs.filter.calibrate import calibrate, describe, write_calibration  # pyarrow: not at the CLI's start

    config = calibrate_config(args)
    section = config.filter
    with input_errors(ValueError, FileNotFoundError, RuntimeError):
        result = calibrate(args.db, section.kind, section.scorer, quantile=config.quantile, limit=config.limit,
                           rule=section.rule, dataset=config.dataset or None, split=config.split)
    write_calibration(result, args.out)
    print(describe(result))
    print(f"written: {args.out}")
    return 0
