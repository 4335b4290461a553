"""One organ vocabulary: the names datasets give their labels → one canonical name per organ.

Datasets spell the same organ many ways ("Liver", "liver", "right_kidney", "kidney_right", "RK", AMOS's "arota").
:func:`canonical_organ` matches by name, case-insensitive: lower case, separators (``_ - / . ,`` brackets) as
spaces, a trailing "left" / "right" moved to the front ("kidney right" → "right kidney"), then the synonyms below.
A name the table does not know comes back in that normalised form, so two spellings of it still agree.

The canonical names are those the phantom and the official MRGen release use ("right kidney", "bladder", ...).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

# canonical name → other names it is given (compared after normalisation)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "liver": ("hepar",),
    "spleen": ("lien",),
    "right kidney": ("rk", "r kidney", "kidney r", "rt kidney"),
    "left kidney": ("lk", "l kidney", "kidney l", "lt kidney"),
    "kidney": ("kidneys", "both kidneys"),
    "gallbladder": ("gall bladder", "gb"),
    "esophagus": ("oesophagus",),
    "stomach": (),
    "aorta": ("arota", "abdominal aorta"),
    "inferior vena cava": ("ivc", "postcava", "vena cava inferior", "vena cava"),
    "pancreas": (),
    "right adrenal gland": ("right adrenal", "rag", "adrenal gland r"),
    "left adrenal gland": ("left adrenal", "lag", "adrenal gland l"),
    "duodenum": (),
    "bladder": ("urinary bladder",),
    "prostate": (),
    "prostate or uterus": ("prostate uterus",),
    "prostate peripheral zone": ("pz", "peripheral zone"),
    "prostate transition zone": ("tz", "transition zone"),
    "liver tumor": ("liver tumour", "liver lesion"),
}


def normalise_name(name: str) -> str:
    words = re.sub(r"[\s_\-/.,()\[\]]+", " ", name.strip().lower()).split()
    if len(words) > 1 and words[-1] in ("left", "right"):
        words = [words[-1], *words[:-1]]
    return " ".join(words)


_LOOKUP = {normalise_name(alias): name for name, aliases in SYNONYMS.items() for alias in (name, *aliases)}


def canonical_organ(name: str) -> str:
    """The vocabulary's name for ``name`` (its normalised form when the vocabulary does not know it)."""
    key = normalise_name(name)
    return _LOOKUP.get(key, key)


def canonical_organ_map(labels: Mapping[int, str]) -> dict[int, str]:
    """A label id → name map with every name in the vocabulary's spelling."""
    return {int(k): canonical_organ(v) for k, v in labels.items()}
