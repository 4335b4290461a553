"""`mrgen db annotate-regions URI`: zero-shot region labels, published as a new DB version (added by `cli/db.py`)."""
from __future__ import annotations

import argparse

from mrgen.cli.common import EXIT_INPUT, add_config_flags, input_errors, load_config
from mrgen.datasets.store import NotADatabaseError
from mrgen.platform.cluster import RayConfig, init_ray


def add_annotate_parser(db_subparsers) -> argparse.ArgumentParser:
    parser = db_subparsers.add_parser(
        "annotate-regions", help="label each slice's body region with an open_clip model (BiomedCLIP)",
        description="Zero-shot region classification (paper appendix B.1) in a Ray Data actor pool; slices below "
                    "the confidence threshold stay unlabeled. Writes a new version of the DB; the index is replaced "
                    "last, so readers never see half of it.")
    parser.add_argument("uri", metavar="URI", help="MRGen-DB location: path, file:// or s3://")
    parser.add_argument("--model", default=None,
                        help="open_clip model: local-dir:/path (folder with open_clip_config.json + weights) or "
                             "hf-hub:org/name (needs the hub); default db.region_model")
    parser.add_argument("--threshold", type=float, default=None,
                        help="minimum softmax confidence (db.region_threshold, 0.40)")
    parser.add_argument("--actors", type=int, default=None, help="actor pool size (db.region_actors)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per model batch")
    add_config_flags(parser, example="region_threshold=0.5")
    parser.set_defaults(func=run_annotate)
    return parser


def run_annotate(args: argparse.Namespace) -> int:
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.datasets.annotate_regions import RegionModelError, annotate_regions
    from mrgen.datasets.config import DBConfig

    config = load_config(DBConfig, args, {"region_model": args.model, "region_threshold": args.threshold,
                                          "region_actors": args.actors}, exit_code=EXIT_INPUT)
    if args.ray_address:
        init_ray(RayConfig(address=args.ray_address))
    with input_errors(RegionModelError, NotADatabaseError):
        annotate_regions(args.uri, config.region_model, threshold=config.region_threshold,
                         actors=config.region_actors, batch_size=args.batch_size)
    return 0
