"""Templated prompt "<modality>; <attributes>; <region>; <organs>" with unknown parts omitted."""
from __future__ import annotations

from mrgen.datasets.prompt import PROMPT_TEMPLATE_VERSION, build_prompt

ATTR = "fat high signal, muscle intermediate signal, water low signal, fat bright, muscle gray, water dark"


def test_full_prompt():
    prompt = build_prompt("T1 MRI", ATTR, "upper abdominal region", ["liver", "spleen", "right kidney"])
    assert prompt == f"T1 MRI; {ATTR}; upper abdominal region; liver, spleen, right kidney"
    assert PROMPT_TEMPLATE_VERSION >= 1


def test_unknown_parts_are_omitted():
    assert build_prompt("T1 MRI", ATTR, None, []) == f"T1 MRI; {ATTR}"
    assert build_prompt("T1 MRI", None, "pelvic region", ["bladder"]) == "T1 MRI; pelvic region; bladder"
    assert build_prompt("T1 MRI", "", "", ()) == "T1 MRI"
    assert build_prompt("T2 MRI", ATTR, None, ["liver"]) == f"T2 MRI; {ATTR}; liver"


def test_organs_deduplicated_in_order_and_separators_cleaned():
    assert build_prompt("T1", None, None, ["spleen", "liver", "spleen", " "]) == "T1; spleen, liver"
    assert build_prompt("T1;x", "a; b", None, []) == "T1,x; a, b"
    assert build_prompt("  T1   MRI ", None, None, []) == "T1 MRI"
