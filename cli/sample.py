"""`mrgen sample --model BUNDLE --mask MASK.png --organ-map JSON --modality LABEL --out DIR`: candidates in-process."""
from __future__ import annotations

import argparse
from pathlib import Path

from mrgen.cli.common import EXIT_CONFIG, CliError, add_settings_flags, input_errors, json_object, settings_flags
from mrgen.models.sampling import SamplingSettings
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate candidates for one mask in this process (no Ray): try a bundle",
        description="Writes DIR/candidate_000.png … (8-bit grey) and DIR/candidates.json (prompt, seeds, bundle id). "
                    "BUNDLE is ours, `embedded`, or the official MRGen release's checkpoint folder as it ships.")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle URI or folder")
    p.add_argument("--mask", required=True, metavar="MASK.png", help="PNG of organ ids (0 = background)")
    p.add_argument("--organ-map", required=True, metavar="JSON", help='organ id → name, e.g. \'{"1": "liver"}\' '
                   "or a JSON file; its names in id order are the release's dataset label list")
    p.add_argument("--modality", required=True, metavar="LABEL", help="target modality label")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--region", default=None, help="body region for the prompt")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="the whole prompt, verbatim")
    p.add_argument("--attributes", default=None, metavar="FILE",
                   help="modality_attributes.json (label → attribute text, the release's format)")
    p.add_argument("--organ-weights", default=None, metavar="JSON",
                   help='official release bundles: organ name → w, condition 2·w − 1, e.g. \'{"liver": 0.3}\'')
    p.add_argument("--n", type=int, help="number of candidates (default 1)")
    p.add_argument("--seed", type=int, help="candidate i gets seed SEED + i (default 0)")
    add_settings_flags(p.add_argument_group("sampling", "default: the release's DDIM 50, guidance 7"),
                       SamplingSettings)
    p.add_argument("--device", help="torch device (cpu, cuda; default cpu)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from mrgen.jobs.sample.config import SampleConfig
    from mrgen.platform.config import ConfigError

    fields = {k: getattr(args, k) for k in ("model", "mask", "modality", "out", "region", "prompt", "attributes", "n",
                                            "seed", "device")
              if getattr(args, k) is not None}
    sampling = {k: v for k, v in settings_flags(args, SamplingSettings).items() if v is not None}
    try:
        config = SampleConfig.load_dict({**fields, "sampling": sampling,
                                         "organ_map": json_object(args.organ_map, "--organ-map"),
                                         "organ_weights": json_object(args.organ_weights, "--organ-weights")},
                                        source="mrgen sample flags")
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    return sample_entry(config)


def sample_entry(config) -> int:
    """Run the job and print where its files went: 0, or 2 with the reason when an input is unusable."""
    from mrgen.jobs.sample.run import RECORD, SampleInputError, run_sample

    with input_errors(SampleInputError):
        record = run_sample(config)
    print(f"wrote {len(record['files'])} candidates and {RECORD} to {Path(config.out)} "
          f"(bundle {record['bundle_id'][:12]}; prompt {record['prompt']!r})", flush=True)
    return 0
