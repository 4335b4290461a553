"""Flags shared by several subcommands, and the one way a command fails: raise :class:`CliError`."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic

from mrgen.datasets.modality import read_attributes_file
from mrgen.platform.cluster import ray_stopped_after
from mrgen.platform.config import ConfigBase, ConfigError
from mrgen.platform.console import Console


def add_config_flags(parser: argparse.ArgumentParser, example: str, ray_address: bool = True,
                     preset: str | None = None) -> None:
    """``--config`` (its default ``preset``, or None: the section's own defaults, the tiny preset), ``--set``
    (``example``: a key of this command's section) and, unless ``ray_address`` is False (a command that starts no
    Ray), ``--ray-address``."""
    parser.add_argument("--config", default=preset,
                        help=f"preset name (e.g. tiny, paper) or YAML file; default: {preset or 'tiny'}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example} (repeatable)")
    if ray_address:
        parser.add_argument("--ray-address", default=None,
                            help="join this Ray cluster instead of starting a local one")


EXIT_INPUT = 2  # an input the command cannot use (a missing DB, a refused request, ...)
EXIT_CONFIG = 1  # a configuration value or flag combination it refuses


class CliError(Exception):
    """Why a command stops: :func:`mrgen.cli.main.main` prints ``mrgen COMMAND: message`` on stderr once and exits
    with ``code``. ``command`` names another command than the one run (`mrgen bench all` refusing a benchmark)."""

    def __init__(self, message: str, code: int = EXIT_INPUT, command: str | None = None):
        super().__init__(message)
        self.code, self.command = code, command


@contextlib.contextmanager
def input_errors(*kinds: type[Exception]):
    """Inside, an exception of ``kinds`` (what the job raises for an input it cannot use) becomes a
    :class:`CliError`: the command exits with 2 naming it."""
    try:
        yield
    except kinds as exc:
        raise CliError(str(exc)) from None


def load_config(cls: type[ConfigBase], args: argparse.Namespace, flags: dict | None = None,
                exit_code: int = EXIT_CONFIG):
    """Config from --config and --set, then the explicit flags (key → value; None means not given). A bad key or
    value stops the command with ``exit_code`` (`mrgen db build` documents 2)."""
    try:
        config = cls.load(args.config, args.overrides)
        return config.with_overrides(flags or {})
    except ConfigError as exc:
        raise CliError(str(exc), exit_code) from None


_json_sinks: list = []  # the real stdout while a command whose stdout is JSON runs


@contextlib.contextmanager
def json_stdout(active: bool):
    """Run a command whose stdout is one JSON document (``args.json``) so that a script can parse it: everything
    else printed meanwhile (nnU-Net's and other libraries' prints) goes to stderr, Ray started meanwhile does not
    forward its workers' lines (they stay in Ray's session logs), and ``print_json`` writes to the real stdout."""
    if not active:
        yield
        return
    forward = os.environ.get("MRGEN_RAY_LOG_TO_DRIVER")
    os.environ["MRGEN_RAY_LOG_TO_DRIVER"] = "0"
    _json_sinks.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_sinks.pop()
        if forward is None:
            os.environ.pop("MRGEN_RAY_LOG_TO_DRIVER", None)
        else:
            os.environ["MRGEN_RAY_LOG_TO_DRIVER"] = forward


def add_console_flags(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``--log`` of a long command (see ``command_console``)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and the frameworks' output live instead of writing it to the log")
    parser.add_argument("--log", default=None, metavar="FILE",
                        help="log of that output (default: mrgen-logs/<command>-<time>.log in the temporary folder)")


@contextlib.contextmanager
def command_console(args: argparse.Namespace, command: str):
    """A long command's console: a line naming the log, progress bars, and Ray's, Ray Train's and nnU-Net's output in
    the log (``--verbose``: live). ``--json`` commands keep theirs (``json_stdout``). Ray started meanwhile stops
    inside, so that its workers' last lines reach the log too."""
    if getattr(args, "json", False) or args.verbose:
        yield
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = Path(args.log or Path(tempfile.gettempdir()) / "mrgen-logs" / f"{command.replace(' ', '-')}-{stamp}.log")
    with Console(log) as console, ray_stopped_after():
        console.line(f"mrgen {command} (logs: {log}; --verbose shows them live)")
        yield


def print_json(data, **kwargs) -> None:
    """``data`` as JSON on the command's real stdout (see ``json_stdout``)."""
    print(json.dumps(data, **kwargs), file=_json_sinks[-1] if _json_sinks else sys.stdout, flush=True)


def json_object(text: str | None, flag: str) -> dict:
    """A flag holding a JSON object, or the name of a file holding one (``{}`` when not given)."""
    try:
        return _json_dict(text) if text else {}
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{flag} {exc}", EXIT_CONFIG) from None


def _json_dict(text: str) -> dict:
    """argparse type of a dict-valued setting: a JSON object, or a file holding one."""
    path = Path(text)
    try:
        data = json.loads(path.read_text() if path.is_file() else text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"is neither a JSON object nor a JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as {\"1\": \"liver\"}")
    return data


def attribute_table(path: str | None) -> dict | None:
    """``--attributes FILE`` (the release's modality_attributes.json format) as a table, None when not given."""
    if not path:
        return None
    try:
        return read_attributes_file(path)
    except ValueError as exc:
        raise CliError(f"--attributes {exc}", EXIT_CONFIG) from None


def add_settings_flags(parser: argparse.ArgumentParser, settings: type,
                       flags: Mapping[str, Sequence[str]] | None = None) -> None:
    """A flag per field of the pydantic ``settings`` class (``--batch-size`` for ``batch_size``), its help the
    field's description and its default None, so that a flag not given leaves the config's value. A field that is
    itself a settings class (pydantic model or pydantic dataclass, e.g. ``sampling: SamplingSettings``) gets a flag per
    field of its own, named by that field alone (``--steps`` sets ``sampling.steps``). ``flags``, when given, names
    the fields that get one instead (dotted key → its flag, then older spellings that still work).
    :func:`settings_flags` reads them back."""
    leaves = dict(_leaf_fields(settings))
    unknown = sorted(set(flags or ()) - set(leaves))
    if unknown:
        raise ValueError(f"flags for {unknown}: {settings.__name__} has no such settings")
    for key, leaf in leaves.items():
        if flags is not None and key not in flags:
            continue
        names = list(flags[key]) if flags is not None else ["--" + key.rsplit(".", 1)[-1].replace("_", "-")]
        kind, choices, nargs = _flag_type(leaf.annotation)
        if kind is bool:
            parser.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction, default=None,
                                help=leaf.description)
        else:
            parser.add_argument(*names, dest=key, type=kind, choices=choices, nargs=nargs,
                                default=None, metavar=None if choices else key.rsplit(".", 1)[-1].upper(),
                                help=leaf.description)


def settings_flags(args: argparse.Namespace, settings: type, prefix: str = "",
                   flags: Mapping[str, Sequence[str]] | None = None) -> dict:
    """The flags of :func:`add_settings_flags` as config keys (``prefix`` + dotted field path) → value; None: not
    given."""
    return {prefix + key: getattr(args, key) for key, _ in _leaf_fields(settings) if flags is None or key in flags}


@dataclasses.dataclass
class _Leaf:
    annotation: typing.Any
    description: str | None


def _leaf_fields(settings: type, prefix: str = ""):
    """(dotted key, :class:`_Leaf`) of every non-settings field of ``settings``, nested settings flattened."""
    # pydantic models and pydantic dataclasses
    fields = {name: _Leaf(f.annotation, f.description) for name, f in settings.__pydantic_fields__.items()}
    for name, leaf in fields.items():
        if isinstance(leaf.annotation, type) and (dataclasses.is_dataclass(leaf.annotation)
                                                   or issubclass(leaf.annotation, pydantic.BaseModel)):
            yield from _leaf_fields(leaf.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, leaf


def _flag_type(annotation) -> tuple[type, tuple | None, int | str | None]:
    """(argparse type, choices, nargs) of a field annotation: ``int``, ``Literal[...]``, ``X | None``,
    ``list[...]`` (nargs ``+``), ``tuple[X, X]`` (nargs 2)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:  # a type with its bounds: the type
        annotation = typing.get_args(annotation)[0]
    nargs: int | str | None = None
    if typing.get_origin(annotation) is dict:
        return _json_dict, None, None
    if typing.get_origin(annotation) is list:
        nargs, annotation = "+", typing.get_args(annotation)[0]
    elif typing.get_origin(annotation) is tuple and Ellipsis not in typing.get_args(annotation):
        nargs, annotation = len(typing.get_args(annotation)), typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices, nargs
    return annotation, None, nargs
