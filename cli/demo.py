"""`mrgen demo`: the paper's cross-modality experiment on the embedded phantom (jobs/experiment)."""
from __future__ import annotations

import argparse

from mrgen.cli.common import EXIT_CONFIG, CliError, load_config
from mrgen.platform import storage


def cmd_demo(args: argparse.Namespace) -> int:
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.jobs.experiment.config import ExperimentConfig
    from mrgen.jobs.experiment.run import run_experiment
    from mrgen.jobs.experiment.seeds import summarise_runs, summary_markdown, write_summary

    args.config = args.config or ("quick" if args.quick else "default")
    config = load_config(ExperimentConfig, args, {"generator": args.generator, "seed": args.seed,
                                                  "verbose": True if args.verbose else None})
    if args.seeds and (args.seed is not None or args.db_only):
        raise CliError("--seeds runs whole experiments, one per seed: drop --seed / --db-only", EXIT_CONFIG)
    if not args.seeds:
        run_experiment(args.out, config=config, ray_address=args.ray_address, db_only=args.db_only)
        return 0
    outs = [storage.join(args.out, f"seed{seed}") for seed in args.seeds]
    for seed, out in zip(args.seeds, outs):  # one after another: each run's budget assumes the whole machine
        run_experiment(out, config=config.with_overrides({"seed": seed}), ray_address=args.ray_address)
    summary = summarise_runs(outs)
    md, _ = write_summary(summary, args.out)
    print(summary_markdown(summary) + f"\n{md}")
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds wants distinct non-negative integers, got {text!r}")
    return seeds


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded default (phantom DB → embedded "
                                           "generator → filtered synthesis → segmenters → report)",
                              description="The paper's cross-modality experiment on the embedded phantom MRGen-DB: "
                                          "build the DB, synthesise the target modality from source masks with the "
                                          "embedded trained generator (or one trained in the run), filter the "
                                          "candidates with LiteMedSAM at calibrated thresholds, train nnU-Net on "
                                          "real source slices, on filtered and unfiltered synthetic target slices "
                                          "and on real target slices (oracle), evaluate all on real target volumes, "
                                          "and write OUT/report. A rerun resumes: finished steps are skipped.")
    p.add_argument("--out", required=True, help="output folder (path or URI)")
    p.add_argument("--quick", action="store_true", help="tiny budgets (a few minutes; CI's end-to-end run)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    p.add_argument("--config", default=None, help="experiment preset (quick, default, paper) or YAML; default: "
                                                  "quick with --quick, else default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key, e.g. --set segment_overrides.epochs=20 (repeatable)")
    p.add_argument("--db-only", action="store_true", help="only build the DB (skip the experiment's steps)")
    p.add_argument("--generator", default=None, metavar="embedded|train|URI",
                   help="embedded (default): the trained bundle the package ships; train: train one from scratch "
                        "under the budget; or any bundle URI")
    p.add_argument("--seed", type=int, default=None, help="seed of the candidates and the segmenters' training "
                                                          "(config key seed; rerun with others for the spread)")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="0,1,2",
                   help="run once per seed into OUT/seed<N> (resumable), then write OUT/seeds.md and seeds.json: "
                        "mean ± sd over the seeds and pooled intervals (as `mrgen report`)")
    p.add_argument("--verbose", action="store_true", help="show every job's output live (default: OUT/logs/)")
    p.set_defaults(func=cmd_demo)
