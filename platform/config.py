"""Typed, validated configuration: pydantic sections, named presets, YAML files and `key=value` overrides.

Every job owns one section class (``jobs/train/config.py`` and so on). A section is loaded from

* a preset name (``tiny``, ``paper``) registered with :func:`preset`, or
* a YAML file, either holding the section's fields at top level or under the section's key
  (one file can then configure every job: ``db:``, ``train:``, ``synthesis:`` ...); a file may name
  ``preset: tiny`` to start from a preset,

then ``--set key.sub=value`` overrides are applied. A bad key or value raises :class:`ConfigError` naming it.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


class ConfigBase(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    section: ClassVar[str] = ""
    # old dotted key → new dotted key, in order, of each setting that moved into a section ("steps":
    # "sampling.steps"): files, presets, mappings and overrides that spell it the old way still load
    renamed: ClassVar[dict[str, str]] = {}
    _presets: ClassVar[dict[str, Callable[[], dict[str, Any]]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._presets = {}

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, data: Any) -> Any:
        """Renamed keys moved to their sections; a partial mapping of a section whose default is an instance
        (``sampling: {steps: 4}``) completed from that default rather than from the section class's own defaults."""
        if not isinstance(data, dict):
            return data
        data = _moved(cls.renamed, data) if cls.renamed else data
        for name, field in cls.model_fields.items():
            if isinstance(data.get(name), dict) and _is_settings(field.default):
                data = {**data, name: {**_as_dict(field.default), **data[name]}}
        return data

    @classmethod
    def presets(cls) -> list[str]:
        return sorted(cls._presets)

    @classmethod
    def from_preset(cls: type[C], name: str) -> C:
        if name not in cls._presets:
            raise ConfigError(f"unknown preset {name!r} for '{cls.section or cls.__name__}': choose from "
                              f"{cls.presets()}")
        return _validate(cls, cls._presets[name](), source=f"preset {name!r}")

    @classmethod
    def load(cls: type[C], source: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
        """Preset name or YAML path (or None for the ``tiny`` preset), then ``key=value`` overrides."""
        data = _source_dict(cls, source)
        for item in overrides:
            key, value = split_override(item)
            if cls.section and key.startswith(f"{cls.section}.") and cls.section not in cls.model_fields:
                raise ConfigError(f"override {item!r}: keys are relative to the '{cls.section}' section, as in its "
                                  f"YAML mapping: write {key[len(cls.section) + 1:]}={item.split('=', 1)[1]}")
            _set_path(data, cls.current_key(key), value)
        return _validate(cls, data, source=str(source or "tiny"))

    @classmethod
    def load_dict(cls: type[C], data: dict[str, Any], source: str = "a mapping") -> C:
        """Validate a plain mapping (a file's content); errors name ``source`` and the key."""
        return _validate(cls, data, source=source)

    def to_yaml(self) -> str:
        return yaml.safe_dump({self.section: self.model_dump(mode="json")} if self.section
                              else self.model_dump(mode="json"), sort_keys=True)

    def with_overrides(self: C, overrides: dict[str, Any]) -> C:
        data = self.model_dump()
        for key, value in overrides.items():
            if value is not None:
                _set_path(data, self.current_key(key), value)
        return _validate(type(self), data, source="command-line flags")

    @classmethod
    def current_key(cls, key: str) -> str:
        """``key`` as it is spelled now (see ``renamed``): an override of a renamed key sets the one it became, so
        that ``filter=none`` sets ``filter.kind`` rather than replacing the ``filter`` section."""
        for old, new in cls.renamed.items():
            if key == old or (key.startswith(old + ".") and not new.startswith(old + ".")):
                return new + key[len(old):]
        return key


def preset(cls: type[ConfigBase], name: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    """Register a function returning a section's values as preset ``name``: ``@preset(TrainConfig, "tiny")``."""

    def register(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        cls._presets[name] = fn
        return fn

    return register


def same_at_every_scale(cls: type[C]) -> type[C]:
    """Class decorator of a section whose values do not depend on scale: its presets ``tiny`` and ``paper`` are its
    fields' defaults (so ``--config tiny|paper`` works as for every other command)."""
    for name in ("tiny", "paper"):
        preset(cls, name)(dict)
    return cls


def _source_dict(cls: type[ConfigBase], source: str | Path | None) -> dict[str, Any]:
    if source is None:
        source = "tiny" if "tiny" in cls._presets else None
    if source is None:
        return {}
    if str(source) in cls._presets:
        return cls._presets[str(source)]()
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"config {str(source)!r} is neither a preset {cls.presets()} nor an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(raw).__name__}")
    if cls.section and cls.section in raw:
        raw = raw[cls.section]
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: section '{cls.section}' must be a mapping")
    elif cls.section and _only_sections(cls, raw):
        others = ", ".join(sorted(k for k in raw if k != "preset"))
        raise ConfigError(f"{path}: no '{cls.section}' section (the file holds only the sections {others}): "
                          f"put the '{cls.section}' keys under '{cls.section}:' or give a preset")
    base_name = raw.pop("preset", None)
    data = cls._presets[base_name]() if base_name else {}
    if base_name and base_name not in cls._presets:
        raise ConfigError(f"{path}: unknown preset {base_name!r}: choose from {cls.presets()}")
    _deep_update(data, raw)
    return data


def _moved(renamed: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each key of ``renamed`` found in it moved to its new place (a mapping merged into what is
    there). A mapping under an old key that is now the section of its new key (``filter: {kind: ...}`` where
    ``filter`` became ``filter.kind``) is the new spelling already and stays."""
    data = copy.deepcopy(data)
    for old, new in renamed.items():
        *parents, leaf = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if new.startswith(old + ".") and isinstance(node[leaf], dict):
            continue
        value = node.pop(leaf)
        *parents, leaf = new.split(".")
        node = data
        for part in parents:
            child = node.get(part, {})
            node[part] = _as_dict(child) if _is_settings(child) else child
            if not isinstance(node[part], dict):
                raise ConfigError(f"{old} (now {new}): {part!r} is not a section")
            node = node[part]
        both = isinstance(node.get(leaf), dict) and isinstance(value, dict)
        node[leaf] = {**node[leaf], **value} if both else value
    return data


def _is_settings(value: Any) -> bool:
    """An instance of a settings class (pydantic model or dataclass)."""
    return isinstance(value, BaseModel) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _as_dict(value: Any) -> dict[str, Any]:
    return value.model_dump() if isinstance(value, BaseModel) else dataclasses.asdict(value)


def _only_sections(cls: type[ConfigBase], raw: dict[str, Any]) -> bool:
    """A file of other sections only: every key but ``preset`` a mapping and none a field of ``cls`` (no list of
    section names to keep in step with the jobs: any mapping that ``cls`` does not know is another section)."""
    keys = [k for k in raw if k != "preset"]
    return bool(keys) and all(isinstance(raw[k], dict) and k not in cls.model_fields for k in keys)


def _validate(cls: type[C], data: dict[str, Any], source: str) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        section = f"'{cls.section}' " if cls.section else ""
        raise ConfigError(f"invalid {section}config from {source}: " + "; ".join(problems)) from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"vae": {"max_steps": 5}}`` → ``{"vae.max_steps": 5}``: as overrides, each replaces one key, never a section.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
