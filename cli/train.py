"""`mrgen train vae|unet|controlnet|all --db URI --out URI`: the three MRGen stages on Ray Train + DeepSpeed."""
from __future__ import annotations

import argparse

from mrgen.cli.common import (CliError, add_config_flags, add_console_flags, command_console, input_errors,
                              load_config, print_json)

_EPILOG = """\
Output under OUT: OUT/<stage>/ (checkpoints, samples/*.png, metrics.prom, history.json), OUT/<stage>/bundle
and OUT/bundle (the newest bundle). Stages 2 and 3 start from OUT/<previous stage>/bundle unless --init names
another bundle. --resume continues OUT/<stage> from its latest checkpoint.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the autoencoder, UNet and mask controller",
                                   description="Train MRGen's stages with Ray Train + DeepSpeed (paper §3.4).",
                                   epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "unet", "controlnet", "all"],
                        help="stage to train (all = the three in order)")
    parser.add_argument("--db", required=True, metavar="URI", help="MRGen-DB to train on")
    parser.add_argument("--out", required=True, metavar="URI", help="output folder (path, file:// or s3://)")
    add_config_flags(parser, example="unet.lr=1e-4")
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers (train.num_workers)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (train.gpus_per_worker)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of the stage(s) (<stage>.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under OUT")
    parser.add_argument("--init", default=None, metavar="BUNDLE_URI",
                        help="bundle of the previous stage (stages unet, controlnet)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    add_console_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.jobs.train.config import STAGES, TrainConfig

    stages = STAGES if args.stage == "all" else (args.stage,)
    flags = {"num_workers": args.workers, "gpus_per_worker": args.gpus_per_worker}
    if args.steps is not None:
        flags.update({f"{s}.max_steps": args.steps for s in stages})
    config = load_config(TrainConfig, args, flags)
    if args.init and args.stage in ("vae", "all"):
        raise CliError(f"--init applies to the unet and controlnet stages, not {args.stage!r}")
    from mrgen.jobs.train.run import run_all, run_training

    with input_errors(FileExistsError, FileNotFoundError, ValueError), command_console(args, "train"):
        if args.stage == "all":
            results = run_all(config, args.db, args.out, resume=args.resume, ray_address=args.ray_address)
        else:
            results = [run_training(config, args.db, args.out, args.stage, resume=args.resume, init=args.init,
                                    ray_address=args.ray_address)]
    summary = [{"stage": r.stage, "steps": r.steps, "bundle": r.bundle_uri, "seconds": round(r.seconds, 1),
                "final_loss": r.history[-1]["loss"] if r.history else None, "restarts": r.restarts}
               for r in results]
    if args.json:
        print_json(summary)
    else:
        for s in summary:
            print(f"{s['stage']:<11} steps={s['steps']:<6} loss={s['final_loss']:.4f}  {s['seconds']:>6.0f}s  "
                  f"{s['bundle']}")
    return 0
