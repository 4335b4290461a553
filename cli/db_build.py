"""`mrgen db build MANIFEST|DIR --out URI`: ingest source volumes into an MRGen-DB (added by `cli/db.py`)."""
from __future__ import annotations

import argparse

from mrgen.cli.common import add_config_flags, input_errors, load_config
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run

EXIT_OK, EXIT_ERROR, EXIT_SKIPPED = 0, 2, 3

_EPILOG = """\
MANIFEST is JSON Lines (.jsonl) or CSV, one row per volume: image, optional label, dataset, modality,
labels (label value -> organ name; a JSON object in CSV), optional split (train/val/test), optional volume_id.
Paths are relative to the manifest's folder. A rerun into the same URI skips volumes already written.
MANIFEST may also be one of the official MRGen release's data lists (.json array or .jsonl with image_path,
mask0_path..mask3_path, modality, modality_attributes, region, label, organs): one slice per row, preprocessed
as the release does (min-max, pad to square, anti-aliased resize to --resolution; the release uses 512).
MANIFEST may instead be a dataset folder DIR in a public collection's native layout, recognised from the folder
(--layout forces one): nnunet (DatasetXXX_Name/ with dataset.json, imagesTr/ labelsTr/ imagesTs/ [labelsTs/]),
msd (TaskXX_Name/, dataset.json with modality, labels, training / test lists; 4-D images give one volume per
channel), chaos (MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/, MR/<id>/T2SPIR/DICOM_anon/, Ground/*.png grey
bands) and amos (imagesTr/ labelsTr/ imagesVa/ labelsVa/ imagesTs/, MR cases = ids >= 500). Sequences map to the
modality table (a warning names those it does not know), organ names to one vocabulary (the dataset's own names
are kept in source_organ_map), every volume to one orientation; splits come from the layout.
The build report (file, row or case, reason of every skipped input; the volumes built; warnings) is written to
URI/build_report.json.

exit codes:
  0  every input was built
  3  some inputs were skipped (see the build report); the rest was built
  2  usage or configuration error, an unreadable manifest, or --strict stopped at the first bad input
"""


def add_build_parser(db_subparsers) -> argparse.ArgumentParser:
    parser = db_subparsers.add_parser(
        "build", help="build an MRGen-DB from a manifest of NIfTI / DICOM / PNG volumes, or a dataset folder",
        description="Ingest source volumes (C.1 preprocessing) into MRGen-DB shards, in parallel on Ray Data.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", metavar="MANIFEST|DIR",
                        help="manifest file (.jsonl or .csv), a release data list, or a dataset folder")
    parser.add_argument("--out", required=True, metavar="URI", help="DB location: path, file:// or s3://")
    add_config_flags(parser, example="shard_rows=256")
    parser.add_argument("--strict", action="store_true", default=None, help="stop at the first bad input (exit 2)")
    parser.add_argument("--resolution", type=int, default=None, help="slice size in pixels (db.resolution)")
    parser.add_argument("--shard-rows", type=int, default=None, help="target slices per shard (db.shard_rows)")
    parser.add_argument("--layout", choices=("nnunet", "msd", "chaos", "amos"), default=None,
                        help="DIR's layout (default: recognised from the folder)")
    parser.add_argument("--split-by", metavar="SEED:FRACTION", default=None,
                        help="DIR: a seeded, case-level share FRACTION of the layout's train cases goes to test")
    parser.add_argument("--modality", metavar="LABEL", default=None,
                        help="DIR: modality label of volumes whose sequence the modality table does not know (AMOS's "
                             "MR cases name none)")
    parser.set_defaults(func=run_build)
    return parser


def run_build(args: argparse.Namespace) -> int:
    from mrgen.datasets.config import DBConfig
    from mrgen.datasets.ingest.build import BuildError, build_db
    from mrgen.datasets.ingest.manifest import ManifestError
    from mrgen.platform.cluster import RayConfig, init_ray

    config = load_config(DBConfig, args, {"strict": args.strict, "resolution": args.resolution,
                                          "shard_rows": args.shard_rows}, exit_code=EXIT_ERROR)
    if args.ray_address:
        init_ray(RayConfig(address=args.ray_address))
    with input_errors(BuildError, ManifestError):
        report = build_db(args.manifest, args.out, config, layout=args.layout, split_by=args.split_by,
                          modality=args.modality)
    return EXIT_SKIPPED if report.skipped else EXIT_OK
