"""`mrgen generate --url URL --mask m.png --modality LABEL --out DIR`: ask a running service for images."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mrgen.cli.common import (CliError, add_config_flags, add_settings_flags, json_object, load_config,
                              settings_flags)
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate images for a mask from a running `mrgen serve`",
        description="Writes DIR/candidate_<i>_seed<seed>.png and DIR/generation.json (seeds, scores, bundle id, "
                    "candidates generated and kept).")
    parser.add_argument("--url", required=True, help="service URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--mask", required=True, help="PNG of organ ids (0 = background)")
    parser.add_argument("--modality", required=True, help="target modality label or free text")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--organ-map", default=None, metavar="JSON",
                        help='organ id → name: a JSON object or a JSON file, e.g. \'{"1": "liver"}\'')
    parser.add_argument("--token", default=os.environ.get("MRGEN_SERVE_TOKEN"),
                        help="bearer token (default $MRGEN_SERVE_TOKEN)")
    from mrgen.serving.client import GenerateConfig

    add_settings_flags(parser, GenerateConfig)  # --n, --keep, --region, --steps, ... --timeout
    add_config_flags(parser, example="steps=20", ray_address=False)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from mrgen.serving.client import GenerateConfig, GenerationError, GeneratorClient, write_generation

    config = load_config(GenerateConfig, args, settings_flags(args, GenerateConfig))
    if not Path(args.mask).is_file():
        raise CliError(f"--mask {args.mask}: no such file")
    with GeneratorClient(args.url, token=args.token, timeout_s=config.timeout) as client:
        try:
            organ_map = json_object(args.organ_map, "--organ-map")
            result = client.generate(args.mask, args.modality, organ_map, **config.request_options())
        except GenerationError as exc:
            raise CliError(f"the service answered {exc}", 1) from None
    paths = write_generation(result, args.out)
    kept = ""
    if result.kept is not None:
        stopped = f", {result.stopped_early} stopped early" if result.stopped_early else ""
        kept = f", kept {result.kept} of {result.generated} generated{stopped}"
    print(f"wrote {len(paths)} images and generation.json to {args.out} (bundle {result.bundle_id[:12]}{kept})")
    return 0
