"""Flags shared by several subcommands."""
from __future__ import annotations

import argparse

from mrgen.platform.config import ConfigBase, ConfigError


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="preset name (tiny, paper) or YAML file; default tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set lr=1e-4 (repeatable)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")


def load_config(cls: type[ConfigBase], args: argparse.Namespace, flags: dict | None = None):
    """Config from --config and --set, then the explicit flags (key → value; None means not given)."""
    try:
        config = cls.load(args.config, args.overrides)
        return config.with_overrides(flags or {})
    except ConfigError as exc:
        raise SystemExit(f"mrgen: {exc}") from None
