"""The templated text prompt of MRGen (§3.3): "<modality>; <attributes>; <region>; <organs>".

Parts that are unknown or empty are left out together with their separator, e.g. an unannotated slice of
unknown region gives "T2 SPIR MRI; fat low signal, ...". Conventions (version 1):

* modality: the dataset's free-text label as given ("T1 in-phase MRI");
* region: the schema's lower-case region name ("upper abdominal region", one of ``schema.REGIONS``);
* organs: names in the order given (the DB uses organ-id order), duplicates dropped, joined by ", "
  ("liver, spleen, right kidney"). A plain comma list keeps every organ name a separate phrase for the
  text encoder and parses back with ``split(", ")``.

Semicolons inside a part would break the template, so they are replaced by commas.
"""
from __future__ import annotations

from collections.abc import Sequence

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
