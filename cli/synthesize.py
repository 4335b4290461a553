"""`mrgen synthesize`: flags → SynthesisConfig → jobs.synthesis.run.run_synthesis."""
from __future__ import annotations

import argparse

from mrgen.cli.common import (add_config_flags, add_console_flags, add_settings_flags, attribute_table,
                              command_console, input_errors, json_object, load_config, settings_flags)
from mrgen.cli.filter import add_filter_flags, filter_flags
from mrgen.models.sampling import SamplingSettings
from mrgen.models.scorers import FilterSettings
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synthesize", help="generate target-modality images from source masks, SAM2-filtered",
                              description="Masks of a source MRGen-DB → candidates per target modality → SAM2 "
                                          "filter → selection → synthetic MRGen-DB with an audit table.")
    p.add_argument("--model", help="model bundle URI, or `embedded` for the trained bundle the package ships")
    p.add_argument("--source", help="source MRGen-DB URI (slices with masks)")
    p.add_argument("--target-modality", dest="target_modalities", action="append", default=None, metavar="LABEL",
                   help="target modality label (repeatable: each mask is used once per label)")
    p.add_argument("--out", help="output URI (synthetic MRGen-DB)")
    p.add_argument("--candidates", type=int, help="candidates per mask (paper: 20)")
    p.add_argument("--keep", type=int, help="candidates kept per mask (paper: 2)")
    add_settings_flags(p.add_argument_group("sampling", "the config's sampling section"), SamplingSettings)
    add_filter_flags(p, FilterSettings)
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--attributes", metavar="FILE", help="modality_attributes.json (label → attribute text, the "
                   "release's format); official release bundles look target labels up in it exactly")
    p.add_argument("--organ-weights", metavar="JSON", help='official release bundles: organ name → w of the '
                   'condition 2·w − 1, e.g. \'{"liver": 0.3, "spleen": 0.6}\' (default 1.0)')
    p.add_argument("--adaptive", action="store_true", default=None, help="candidates in waves; stop once `keep` pass")
    p.add_argument("--early-reject-at", type=float, metavar="FRACTION",
                   help="with --adaptive: score each candidate's predicted clean image at this fraction of the steps")
    p.add_argument("--early-reject-below", type=float, metavar="MEAN_IOU",
                   help="... and stop the candidates whose mean IoU there is below this (default 0: stop none)")
    p.add_argument("--max-masks", type=int, help="use only the first N masks")
    add_config_flags(p, example="candidates=8")
    add_console_flags(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return synthesize_entry(synthesis_config(args), args)


def synthesis_config(args: argparse.Namespace):
    """The `SynthesisConfig` of these flags: --config and --set, then the explicit flags."""
    from mrgen.jobs.synthesis.config import SynthesisConfig

    flags = {"model": args.model, "source": args.source, "target_modalities": args.target_modalities, "out": args.out,
             "candidates": args.candidates, "keep": args.keep, "seed": args.seed,
             **settings_flags(args, SamplingSettings, "sampling."), **filter_flags(args, FilterSettings),
             "modality_attributes": attribute_table(args.attributes),
             "organ_weights": json_object(args.organ_weights, "--organ-weights") or None,
             "adaptive": args.adaptive, "early_reject_at": args.early_reject_at,
             "early_reject_below": args.early_reject_below,
             "max_masks": args.max_masks, "ray.address": args.ray_address}
    return load_config(SynthesisConfig, args, flags)


def synthesize_entry(config, args: argparse.Namespace) -> int:
    """Run the job (its progress on the console, Ray's and Ray Data's output in the log) and print its summary: 0, or
    2 with the reason when an input is unusable."""
    from mrgen.jobs.synthesis.run import SynthesisInputError, run_synthesis

    with input_errors(SynthesisInputError), command_console(args, "synthesize"):
        report = run_synthesis(config)
    t = report["totals"]
    print(f"synthesized into {report['out']}: {t['masks']} masks ({t['masks_skipped']} skipped), "
          f"{t['candidates_generated']} candidates"
          + (f" (+{t['candidates_stopped_early']} stopped early)" if t.get("candidates_stopped_early") else "")
          + f", {t['candidates_kept']} kept, {t['masks_relaxed']} relaxed; "
          f"{report['rows']} rows in {report['shards']} shards"
          + ("" if report["scores_meaningful"] else "  [untrained/no filter: scores mean nothing]"), flush=True)
    if report["contact_sheet"]:
        print(f"contact sheet: {report['contact_sheet']}")
    return 0
