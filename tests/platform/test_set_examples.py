"""Every `--set KEY=VALUE` example the docs show (README.md, docs/, docstrings, `--help` texts) is accepted by the
config of the command it is written for: one spelling of a key, everywhere."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from mrgen.platform.config import ConfigBase, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("platform", "datasets", "models", "jobs", "serving", "cli")
EXAMPLE = re.compile(r"--set[ =]([A-Za-z_][\w.]*)=([^\s`'\")]*)")
COMMAND = re.compile(r"(?:mrgen|make)\s+([a-z][\w-]*(?:\s+[a-z][\w-]*)?)")

# command → (config class, preset its handler starts from when --config is not given)
COMMANDS = {
    "demo": ("mrgen.jobs.experiment.config:ExperimentConfig", "default"),
    "train": ("mrgen.jobs.train.config:TrainConfig", None),
    "synthesize": ("mrgen.jobs.synthesis.config:SynthesisConfig", None),
    "serve": ("mrgen.serving.config:ServeConfig", None),
    "segment": ("mrgen.jobs.segment.config:SegmentConfig", None),
    "db phantom": ("mrgen.datasets.phantom:PhantomConfig", "default"),
    "db build": ("mrgen.datasets.config:DBConfig", None),
    "db annotate-regions": ("mrgen.datasets.config:DBConfig", None),
    "eval": ("mrgen.jobs.evaluate.config:EvaluateConfig", None),
    "filter calibrate": ("mrgen.jobs.filter.config:CalibrateConfig", None),
    "export": ("mrgen.jobs.export.config:ExportConfig", None),
    "generate": ("mrgen.serving.client:GenerateConfig", None),
    "bench": ("mrgen.jobs.bench.config:BenchConfig", None),
}


def _config(command: str):
    for name in sorted(COMMANDS, key=len, reverse=True):  # "db phantom" before "db"
        if command == name or command.startswith(name + " "):
            module, cls = COMMANDS[name][0].split(":")
            return getattr(importlib.import_module(module), cls), COMMANDS[name][1]
    return None, None


def _command_before(text: str, pos: int) -> str | None:
    """The last `mrgen CMD` / `make CMD` in the paragraph before ``pos``."""
    paragraph = text[:pos].rsplit("\n\n", 1)[-1]
    found = COMMAND.findall(paragraph)
    return found[-1] if found else None


def _module_section_class(path: Path):
    """The config section a source file defines (``section = "..."``), if any."""
    module = importlib.import_module("mrgen." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, ConfigBase) and c.__module__ == module.__name__ and c.__dict__.get("section")]
    return classes[0] if len(classes) == 1 else None


def _placeholder(key: str, value: str) -> bool:
    return key.split(".")[0].lower() == "key" or value.lower() == "value" or value.startswith("...")


def doc_examples() -> list[tuple[str, str, str]]:
    """(where, command or module, KEY=VALUE) for every example in the docs and the source's strings."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in EXAMPLE.finditer(text):
            if not _placeholder(m[1], m[2]):
                found.append((f"{doc.name}:{text[:m.start()].count(chr(10)) + 1}", _command_before(text, m.start()),
                              f"{m[1]}={m[2]}"))
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                for m in EXAMPLE.finditer(node.value):
                    if _placeholder(m[1], m[2]) or path.parts[-2] == "cli":  # cli help: test_help_examples
                        continue
                    command = _command_before(node.value, m.start()) or f"module {path.relative_to(ROOT)}"
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", command, f"{m[1]}={m[2]}"))
    return found


def help_examples() -> list[tuple[str, str]]:
    """(command, KEY=VALUE) for every `--set` example in a subcommand's `--help`."""
    import argparse

    from mrgen.cli.main import build_parser

    found = []

    def walk(parser: argparse.ArgumentParser, command: str) -> None:
        texts = [parser.description or "", parser.epilog or ""]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{command} {name}".strip())
            texts.append(action.help or "")
        for text in texts:
            for m in EXAMPLE.finditer(text):
                if not _placeholder(m[1], m[2]):
                    found.append((_command_before(text, m.start()) or command, f"{m[1]}={m[2]}"))

    walk(build_parser(), "")
    return found


def _accepts(cls, preset: str | None, example: str) -> None:
    try:
        cls.load(preset, [example])
    except ConfigError as exc:
        pytest.fail(f"--set {example} is rejected by {cls.__name__}: {exc}")


@pytest.mark.parametrize("where,command,example", doc_examples(), ids=lambda v: str(v))
def test_doc_examples_are_accepted(where, command, example):
    if command and command.startswith("module "):
        cls, preset = _module_section_class(ROOT / command.split(" ", 1)[1]), None
    else:
        cls, preset = _config(command or "")
    assert cls is not None, (f"{where}: --set {example} names no command this test knows ({command!r}): "
                             "add it to COMMANDS")
    _accepts(cls, preset, example)


@pytest.mark.parametrize("command,example", help_examples(), ids=lambda v: str(v))
def test_help_examples_are_accepted(command, example):
    cls, preset = _config(command)
    assert cls is not None, f"`mrgen {command} --help` shows --set {example}: add the command to COMMANDS"
    _accepts(cls, preset, example)


def test_there_are_examples():
    assert len(doc_examples()) >= 3 and len(help_examples()) >= 8


def test_a_section_prefixed_key_names_the_one_spelling():
    from mrgen.jobs.experiment.config import ExperimentConfig

    with pytest.raises(ConfigError, match=r"relative to the 'experiment' section.*write segment_overrides\.epochs=20"):
        ExperimentConfig.load("default", ["experiment.segment_overrides.epochs=20"])
