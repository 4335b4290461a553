"""The templated text prompt of MRGen (§3.3): "<modality>; <attributes>; <region>; <organs>".

Parts that are unknown or empty are left out together with their separator, e.g. an unannotated slice of
unknown region gives "T2 SPIR MRI; fat low signal, ...". Conventions (version 1):

* modality: the dataset's free-text label as given ("T1 in-phase MRI");
* region: the schema's lower-case region name ("upper abdominal region", one of ``schema.REGIONS``);
* organs: names in the order given (the DB uses organ-id order), duplicates dropped, joined by ", "
  ("liver, spleen, right kidney"). A plain comma list keeps every organ name a separate phrase for the
  text encoder and parses back with ``split(", ")``.

Semicolons inside a part would break the template, so they are replaced by commas.

A bundle of the official MRGen release was trained on another template (:func:`official_prompt`);
:class:`PromptRecipe` picks the one a bundle's manifest names.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mrgen.datasets.modality import attributes_for

PROMPT_TEMPLATE_VERSION = 1
SEPARATOR = "; "


def _clean(part: str | None) -> str:
    return " ".join((part or "").replace(";", ",").split())


def join_organs(organs: Sequence[str]) -> str:
    seen: list[str] = []
    for organ in organs:
        name = _clean(organ)
        if name and name not in seen:
            seen.append(name)
    return ", ".join(seen)


def build_prompt(modality: str, attributes: str | None, region: str | None, organs: Sequence[str]) -> str:
    parts = [_clean(modality), _clean(attributes), _clean(region), join_organs(organs or ())]
    return SEPARATOR.join(p for p in parts if p)


PROMPT_TEMPLATES = ("mrgen", "official")


def official_prompt(modality: str, attributes: str | None, region: str | None, labels: Sequence[str]) -> str:
    """The official MRGen release's prompt: ``", ".join`` of modality, attributes, region and the dataset's label
    list (every organ the dataset annotates, not only those in the slice), empty parts left out."""
    parts = [modality, attributes or "", region or "", ", ".join(labels or ())]
    return ", ".join(p for p in parts if p).strip()


@dataclass(frozen=True)
class PromptRecipe:
    """How one bundle's prompts are written: its ``prompt_template`` (manifest field; ``mrgen`` when absent) and the
    attribute table of its modality labels (``official``: the user's ``modality_attributes.json``, looked up
    exactly; ``mrgen``: our table, extended by ``table``)."""

    template: str = "mrgen"
    table: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_bundle(cls, manifest: Mapping[str, Any], table: Mapping[str, str] | None = None) -> PromptRecipe:
        template = str(manifest.get("prompt_template", "mrgen"))
        if template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt_template {template!r} in the bundle manifest: known {PROMPT_TEMPLATES}")
        return cls(template, dict(table or {}))

    def attributes(self, label: str) -> str:
        """The attribute text of a modality label; raises ``UnknownModalityError`` naming it."""
        return attributes_for(label, dict(self.table) or None, exact=self.template == "official")

    def render(self, modality: str, attributes: str | None, region: str | None, organs: Sequence[str],
               labels: Sequence[str]) -> str:
        """``organs``: those in the slice (our template); ``labels``: the dataset's label list (the release's)."""
        if self.template == "official":
            return official_prompt(modality, attributes, region, labels)
        return build_prompt(modality, attributes, region, organs)
