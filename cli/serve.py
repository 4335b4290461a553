"""`mrgen serve --model URI [--config FILE] [--host --port] [--steps N ...] [--filter KIND --thresholds FILE]`: run the
generation service until Ctrl-C. The console shows the URL, the model and the filter; Ray's and the replicas' output
goes to a log (`--verbose`: live).

`--print-config` writes the equivalent Ray Serve config file (for `serve deploy` / `serve run`) instead.
"""
from __future__ import annotations

import argparse
import sys

from mrgen.cli.common import (CliError, add_config_flags, add_console_flags, add_settings_flags, attribute_table,
                              command_console, input_errors, json_object, load_config, settings_flags)
from mrgen.cli.filter import add_filter_flags, filter_flags
from mrgen.models.sampling import SamplingSettings
from mrgen.platform.config import ConfigError
from mrgen.serving.config import ServeConfig, ServeFilterSettings
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="online generation endpoint on Ray Serve",
        description="Ingress (FastAPI) → batched, autoscaled generator → optional filter (SAM2 or LiteMedSAM). "
                    "API: POST /v1/generate, GET /v1/modalities, /healthz, /readyz, /metrics, /openapi.json.")
    parser.add_argument("--model", default=None, metavar="URI",
                        help="model bundle (ModelBundle.save folder, or the official release's checkpoint folder), "
                             "or `embedded` for the trained bundle the package ships")
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    parser.add_argument("--attributes", default=None, metavar="FILE",
                        help="modality_attributes.json (label → attribute text, the release's format): the labels "
                             "an official release bundle accepts")
    parser.add_argument("--organ-weights", default=None, metavar="JSON",
                        help='official release bundles: organ name → w of the condition 2·w − 1, e.g. '
                             '\'{"liver": 0.3}\'')
    add_settings_flags(parser.add_argument_group("sampling", "how a request that does not say is sampled: the "
                                                 "config's sampling section"), SamplingSettings)
    add_filter_flags(parser, ServeFilterSettings)
    parser.add_argument("--token-env", default=None, metavar="VAR",
                        help="require 'Authorization: Bearer $VAR' on /v1 routes")
    parser.add_argument("--print-config", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the Ray Serve config YAML (to FILE, or stdout) and exit")
    add_config_flags(parser, example="sampling.steps=20")
    add_console_flags(parser)
    parser.set_defaults(func=handle)


def serve_config(args: argparse.Namespace):
    """The `ServeConfig` of these flags: --config and --set, then the explicit flags."""
    flags = {"model": args.model, "host": args.host, "port": args.port, "auth_token_env": args.token_env,
             **settings_flags(args, SamplingSettings, "sampling."), **filter_flags(args, ServeFilterSettings),
             "modality_attributes": attribute_table(args.attributes),
             "organ_weights": json_object(args.organ_weights, "--organ-weights") or None}
    return load_config(ServeConfig, args, flags)


def handle(args: argparse.Namespace) -> int:
    config = serve_config(args)
    if args.print_config is not None:
        from mrgen.platform.storage import write_text
        from mrgen.serving.server import deploy_config_yaml

        text = deploy_config_yaml(config)
        if args.print_config == "-":
            sys.stdout.write(text)
        else:
            write_text(args.print_config, text)
            print(f"wrote {args.print_config}", file=sys.stderr)
        return 0
    if not config.model:
        raise CliError("--model URI is required (or serve.model in the config)")
    from mrgen.serving.server import run_service

    with input_errors(ConfigError):
        config.resolved()  # a thresholds file the filter cannot use is refused here, before Ray starts
    with command_console(args, "serve"):
        run_service(config, ray_address=args.ray_address)
    return 0
