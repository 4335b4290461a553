"""`mrgen export nnunet`: MRGen-DB (synthetic training slices, real test slices) → nnU-Net v2 raw dataset."""
from __future__ import annotations

import argparse

from mrgen.cli.common import add_config_flags, add_settings_flags, input_errors, load_config, print_json, settings_flags
from mrgen.jobs.export.config import ExportConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export MRGen-DB data for other tools")
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    n = sub.add_parser("nnunet", help="nnU-Net v2 raw dataset (2-D PNG)")
    n.add_argument("--synthetic", help="MRGen-DB URI whose masked slices become imagesTr/labelsTr")
    n.add_argument("--out", required=True, help="nnUNet_raw folder (the dataset folder is created inside)")
    n.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999)")
    n.add_argument("--name", required=True, help="dataset name (letters, digits, '-')")
    n.add_argument("--real", help="MRGen-DB URI whose masked slices become imagesTs/labelsTs")
    n.add_argument("--real-dataset", action="append", default=None, help="only these datasets of --real (repeatable)")
    n.add_argument("--real-modality", action="append", default=None, help="only these modalities of --real")
    add_settings_flags(n, ExportConfig)  # --split, --labels, --verify
    add_config_flags(n, example="labels=liver,spleen", ray_address=False)
    n.set_defaults(func=_nnunet, json=True)


def _nnunet(args: argparse.Namespace) -> int:
    # each cli module is imported at the CLI's start-up: its handlers import the job modules they run
    from mrgen.jobs.export.nnunet import ExportError, export_nnunet

    config = load_config(ExportConfig, args, settings_flags(args, ExportConfig))
    with input_errors(ExportError, FileNotFoundError):
        summary = export_nnunet(args.out, args.dataset_id, args.name, synthetic=args.synthetic, real=args.real,
                                real_split=config.split, real_datasets=args.real_dataset,
                                real_modalities=args.real_modality, labels=config.labels)
    if config.verify:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        verify_dataset_integrity(summary["folder"], num_processes=1)
    print_json(summary, indent=1)
    return 0
