"""`mrgen db ...`: build the embedded phantom DB, print a DB's counts, draw a contact sheet.

`mrgen db build` and `mrgen db annotate-regions` are added by `cli/db_build.py` and `cli/db_annotate.py`.
"""
from __future__ import annotations

import argparse

from mrgen.cli.common import EXIT_CONFIG, CliError, add_config_flags, input_errors, load_config
from mrgen.cli.db_annotate import add_annotate_parser
from mrgen.cli.db_build import add_build_parser
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def register(subparsers) -> None:
    parser = subparsers.add_parser("db", help="MRGen-DB: build, inspect and view the sharded slice database",
                                   description="MRGen-DB: build, inspect and view the sharded slice database")
    sub = parser.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)

    p = sub.add_parser("phantom", help="build the embedded synthetic abdominal MR database",
                       description="Render seeded synthetic abdominal MR volumes into an MRGen-DB "
                                   "(phantom-src with masks, phantom-tgt with test masks only, phantom-pool "
                                   "unannotated).")
    p.add_argument("--out", required=True, help="DB location (path, file:// or s3:// URI)")
    add_config_flags(p, example="test_volumes=20", preset="default")
    p.add_argument("--seed", type=int, default=None, help="random seed (config key seed)")
    p.add_argument("--volumes", type=int, default=None, help="volumes per dataset (config key volumes)")
    p.add_argument("--resolution", type=int, default=None, help="slice size in pixels (config key resolution)")
    p.add_argument("--ray", dest="use_ray", action="store_true",
                   help="render in parallel on Ray (local or --ray-address)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("info", help="print a DB's counts per dataset / modality / region / has_mask / split")
    p.add_argument("uri", help="DB location")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("show", help="draw a contact sheet of slices with mask overlays and prompts")
    p.add_argument("uri", help="DB location")
    p.add_argument("--out", required=True, help="PNG to write (path or URI)")
    p.add_argument("--n", type=int, default=16, help="number of slices (spread over the matching rows)")
    p.add_argument("--columns", type=int, default=4, help="slices per row of the sheet")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--modality", default=None, help="only this modality label")
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="only this split")
    p.add_argument("--has-mask", action="store_true", help="only annotated slices")
    p.set_defaults(func=cmd_show)

    add_build_parser(sub)
    add_annotate_parser(sub)


def cmd_phantom(args: argparse.Namespace) -> int:
    from mrgen.datasets.phantom import PhantomConfig, build_phantom_db

    config = load_config(PhantomConfig, args, {"seed": args.seed, "volumes": args.volumes,
                                               "resolution": args.resolution})
    if args.use_ray or args.ray_address:
        from mrgen.platform.cluster import RayConfig, init_ray

        init_ray(RayConfig(address=args.ray_address))
    index = build_phantom_db(args.out, config)
    print(index.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mrgen.datasets.store import NotADatabaseError, load_index

    with input_errors(NotADatabaseError):
        index = load_index(args.uri)
    print(index.summary())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
    from mrgen.datasets.store import NotADatabaseError, read_table

    filters = {"dataset": args.dataset, "modality": args.modality, "split": args.split,
               "has_mask": True if args.has_mask else None}
    with input_errors(NotADatabaseError):
        table = read_table(args.uri, **{k: v for k, v in filters.items() if v is not None})
    if table.num_rows == 0:
        raise CliError(f"no slices match {filters}", EXIT_CONFIG)
    table = table.sort_by([("slice_id", "ascending")])
    picks = sorted({round(i * (table.num_rows - 1) / max(args.n - 1, 1)) for i in range(min(args.n, table.num_rows))})
    rows = table.take(picks).to_pylist()
    title = f"{args.uri}: {len(rows)} of {table.num_rows} slices"
    contact_sheet(items_from_rows(rows), args.out, columns=args.columns, title=title)
    print(f"wrote {args.out} ({len(rows)} slices)")
    return 0
