"""`mrgen segment train|eval`: nnU-Net v2 segmenters on MRGen-DB slices and their volumetric Dice."""
from __future__ import annotations

import argparse

from mrgen.cli.common import (EXIT_CONFIG, CliError, add_config_flags, add_console_flags, command_console,
                              input_errors, load_config, print_json)
from mrgen.datasets.store import NotADatabaseError
from mrgen.platform.config import ConfigError

_TRAIN_EPILOG = """\
--dataset / --modality / --split select slices in every --train DB (a slice must match each given flag;
repeat a flag for several values). Examples:
  real source slices:  mrgen segment train --train DB --dataset phantom-src --out src-model
  synthetic slices:    mrgen segment train --train SYN_DB --split train --out syn-model
  both:                mrgen segment train --train DB --train SYN_DB --dataset phantom-src --dataset <syn name> ...
--budget epochs=E,iterations=I,width=W[,batch=B,val_iterations=V,minutes=M] shrinks nnU-Net's schedule and network;
minutes=M fits the run in M minutes of wall time by giving later epochs fewer iterations.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="train / evaluate nnU-Net v2 segmenters (downstream task)")
    sub = parser.add_subparsers(dest="segment_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train nnU-Net v2 (2d) on MRGen-DB slices in a Ray task",
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--train", dest="train_uris", action="append", required=True, metavar="URI",
                   help="MRGen-DB with masked training slices (repeatable)")
    t.add_argument("--out", required=True, metavar="URI", help="model folder to write (path, file:// or s3://)")
    t.add_argument("--dataset", action="append", default=None, help="only these datasets (repeatable)")
    t.add_argument("--modality", action="append", default=None, help="only these modality labels (repeatable)")
    t.add_argument("--split", default="train", help="split to train on ('any' for all; default train)")
    t.add_argument("--budget", default=None, metavar="K=V,...",
                   help="epochs, iterations, width, batch, val_iterations, minutes")
    t.add_argument("--gpus", type=float, default=None, help="GPUs of the training task (segment.num_gpus)")
    t.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    add_config_flags(t, example="epochs=20")
    add_console_flags(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="volumetric Dice of a segmenter on real test volumes")
    e.add_argument("--model", required=True, metavar="URI", help="model folder written by `mrgen segment train`")
    e.add_argument("--test", required=True, metavar="URI", help="MRGen-DB with masked test slices")
    e.add_argument("--dataset", action="append", default=None, help="only these datasets (repeatable)")
    e.add_argument("--modality", action="append", default=None, help="only these modality labels (repeatable)")
    e.add_argument("--split", default="test", help="split to evaluate (default test)")
    e.add_argument("--out", default=None, metavar="URI", help="write the report as JSON here")
    e.add_argument("--predictions", default=None, metavar="URI", help="also save predicted volumes (.npz)")
    e.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time mirroring (segment.mirroring)")
    e.add_argument("--pooled", action="store_true",
                   help="score the selected slices as one stack (Dice pooled over slices) instead of per volume: "
                        "synthetic DBs, whose candidates share slice positions, and fit to a model's training slices")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="with --pooled: at most N slices, evenly spread in slice-id order")
    e.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_config_flags(e, example="device=cpu")
    add_console_flags(e)
    e.set_defaults(func=_eval)


def _config(args: argparse.Namespace, flags: dict):
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.jobs.segment.config import SegmentConfig, parse_budget

    try:
        flags = {**flags, **parse_budget(getattr(args, "budget", None))}
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    return load_config(SegmentConfig, args, flags)


def _train(args: argparse.Namespace) -> int:
    from mrgen.jobs.segment.train import SegmentInputError, TrainSource, train_segmenter

    config = _config(args, {"num_gpus": args.gpus})
    split = None if args.split == "any" else args.split
    sources = [TrainSource(uri, tuple(args.dataset) if args.dataset else None,
                           tuple(args.modality) if args.modality else None, split) for uri in args.train_uris]
    with (input_errors(SegmentInputError, NotADatabaseError, FileNotFoundError),
          command_console(args, "segment train")):
        manifest = train_segmenter(config, sources, args.out, ray_address=args.ray_address)
    if args.json:
        print_json({"model": args.out, "training_cases": manifest["training_cases"], "labels": manifest["labels"],
                    "final": manifest["final"], "timings": manifest["timings"]}, indent=1)
        return 0
    final, timings = manifest["final"], manifest["timings"]
    organs = sorted((n for n in manifest["labels"] if n != "background"), key=manifest["labels"].get)
    dice = ", ".join(f"{name} {100 * d:.0f}" for name, d in zip(organs, final["pseudo_dice"] or []))
    print(f"trained {args.out}: {manifest['training_cases']} slices, {manifest['iterations']} iterations in "
          f"{timings['train_s']:.0f} s; final train loss {final['train_loss']:.3f}"
          + (f"; nnU-Net's pseudo-Dice % {dice}" if dice else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.segmenter import evaluate_segmenter
    from mrgen.jobs.segment.train import SegmentInputError

    config = _config(args, {"mirroring": args.mirroring})
    if args.limit is not None and (not args.pooled or args.limit < 1):
        raise CliError("--limit needs --pooled and N >= 1", EXIT_CONFIG)
    with (input_errors(SegmentInputError, NotADatabaseError, FileNotFoundError, ValueError),
          command_console(args, "segment eval")):
        report = evaluate_segmenter(config, args.model, args.test, out_uri=args.out, ray_address=args.ray_address,
                                    split=args.split, datasets=args.dataset, modalities=args.modality,
                                    predictions_uri=args.predictions, pooled=args.pooled, limit=args.limit)
    if args.json:
        print_json({k: v for k, v in report.items() if k != "table"}, indent=1)
    else:
        scope = "pooled" if report["pooled"] else f"{report['n_volumes']} volume(s),"
        print(f"Dice (%) of {args.model} on {scope} {report['n_slices']} slices of {args.test}")
        print(report["table"])
        if report["organs_not_in_model"]:
            print(f"not scored (the model has no such label): {', '.join(report['organs_not_in_model'])}")
        print("'-' = organ absent from reference and prediction (not scored); mean = mean over organs of the "
              "per-organ mean over volumes")
        if args.out:
            print(f"report: {args.out}")
    return 0
