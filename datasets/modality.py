"""Modality attributes: free-text modality labels → fat / muscle / water signal descriptions (paper §3.2, B.1).

The paper asks GPT-4 for "fat {} signal, muscle {} signal, water {} signal, fat {}, muscle {}, water {}" per
label; here a fixed table written in that form stands in for it. A label is resolved in three steps:

1. normalised exact match (lower case, punctuation → spaces, "T2-weighted"/"T2w" → "t2", filler words such as
   "MRI", "abdomen", "axial" dropped) against the table's names and aliases, ``extra`` first;
2. keyword rules, most specific first ("t1 opposed phase" → T1 out-of-phase, "dwi b800" → DWI);
3. otherwise :class:`UnknownModalityError` naming the label.

``extra`` (``DBConfig.modality_attributes``) maps labels to attribute text; it adds new labels and overrides
the built-in text of a canonical name ("T2 SPIR": "...").
"""
from __future__ import annotations

import re
from collections.abc import Callable
# storage (fsspec) where an attributes file is read: the CLI imports this module at its start-up

MODALITY_TABLE_VERSION = 1


def _attrs(fat: str, muscle: str, water: str, note: str | None = None) -> str:
    brightness = {"high": "bright", "very high": "very bright", "intermediate": "gray", "low": "dark",
                  "very low": "very dark"}
    text = (f"fat {fat} signal, muscle {muscle} signal, water {water} signal, "
            f"fat {brightness[fat]}, muscle {brightness[muscle]}, water {brightness[water]}")
    return f"{text}, {note}" if note else text


# Canonical modality name → attributes. Values follow typical 1.5 T abdominal appearances.
MODALITY_TABLE: dict[str, str] = {
    "T1": _attrs("high", "intermediate", "low"),
    "T1 in-phase": _attrs("high", "intermediate", "low"),
    "T1 out-of-phase": _attrs("high", "intermediate", "low", "fat-water interfaces dark"),
    "T1 fat-sat": _attrs("low", "intermediate", "low"),
    "T1 C+": _attrs("low", "intermediate", "low", "enhancing tissue bright"),
    "T2": _attrs("high", "low", "high"),
    "T2 SPIR": _attrs("low", "low", "high"),
    "T2 HASTE": _attrs("high", "low", "very high"),
    "STIR": _attrs("very low", "low", "high"),
    "PD": _attrs("high", "intermediate", "intermediate"),
    "DWI": _attrs("low", "low", "low", "restricted diffusion bright"),
    "ADC": _attrs("low", "intermediate", "high"),
    "CT": "fat low density, muscle intermediate density, water low density, fat dark, muscle gray, water dark gray",
}

# Other spellings that mean exactly a canonical name (compared after normalisation).
ALIASES: dict[str, tuple[str, ...]] = {
    "T1": ("t1 weighted", "t1wi", "t1 se", "t1 tse"),
    "T1 in-phase": ("t1 inphase", "t1 ip", "in phase", "inphase", "t1 dual in phase"),
    "T1 out-of-phase": ("t1 outofphase", "t1 opposed phase", "t1 oop", "out of phase", "opposed phase", "t1 op"),
    "T1 fat-sat": ("t1 fs", "t1 fatsat", "t1 fat suppressed", "t1 fat saturated", "t1 spir", "t1 vibe"),
    "T1 C+": ("t1c+", "t1 c", "t1 post contrast", "t1 contrast", "t1 gd", "t1 gad", "t1c", "t1gd"),
    "T2": ("t2 weighted", "t2wi", "t2 tse", "t2 fse", "t2 se"),
    "T2 SPIR": ("t2 fat sat", "t2 fatsat", "t2 fs", "t2 spair", "t2 fat suppressed", "t2 fat saturated", "t2spir"),
    "T2 HASTE": ("haste", "t2 ssfse", "ssfse", "t2 single shot"),
    "STIR": ("t2 stir", "short tau inversion recovery"),
    "PD": ("proton density", "pd weighted", "pdw", "pdwi"),
    "DWI": ("diffusion weighted", "diffusion", "dwi trace", "trace"),
    "ADC": ("adc map", "apparent diffusion coefficient"),
    "CT": ("computed tomography", "ct scan"),
}

_FILLER = {"mri", "mr", "image", "images", "imaging", "abdomen", "abdominal", "pelvis", "pelvic", "liver",
           "sequence", "axial", "coronal", "sagittal", "ax", "cor", "sag", "weighted", "scan", "2d", "3d",
           "the", "series", "w"}


class UnknownModalityError(KeyError):
    """No table entry or keyword rule matches the modality label."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label

    def __str__(self) -> str:
        return (f"unknown modality label {self.label!r}: no entry or keyword matches; add it to "
                f"db.modality_attributes (known: {', '.join(MODALITY_TABLE)})")


def normalise(label: str, drop_filler: bool = True) -> str:
    """Lower case, punctuation as spaces, "t2w"/"t2-weighted" → "t2", filler words dropped."""
    text = label.lower().replace("c+", " cplus ").replace("+c", " cplus ")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    text = re.sub(r"\bt([12])\s*w(?:i)?\b", r"t\1", text)
    text = re.sub(r"\bt([12])\s+weighted\b", r"t\1", text)
    words = text.split()
    if drop_filler:
        words = [w for w in words if w not in _FILLER]
    return " ".join(words).replace("cplus", "c+")


def _exact_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for name in MODALITY_TABLE:
        keys[normalise(name)] = name
        for alias in ALIASES.get(name, ()):
            keys[normalise(alias)] = name
    return keys


_EXACT = _exact_keys()


def _has(*words: str) -> Callable[[str], bool]:
    """True when any of the words/phrases occurs as whole words in the normalised label."""
    patterns = [re.compile(rf"(?:^| ){re.escape(w)}(?:$| )") for w in words]
    return lambda text: any(p.search(text) for p in patterns)


_T1 = _has("t1")
_T2 = _has("t2")
_FATSAT = _has("fs", "fatsat", "fat sat", "fat suppressed", "fat saturated", "fat suppression", "spir", "spair",
               "fat saturation", "fsat")
_CONTRAST = _has("c+", "post contrast", "contrast", "gd", "gad", "gadolinium", "enhanced", "arterial", "portal",
                 "venous", "delayed", "hepatobiliary", "post", "postcontrast")

# (canonical name, predicate on the normalised label), most specific first.
KEYWORD_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("CT", _has("ct", "computed tomography")),
    ("ADC", _has("adc", "apparent diffusion")),
    ("DWI", lambda t: _has("dwi", "diffusion", "trace")(t) or re.search(r"(?:^| )b ?\d{2,4}(?:$| )", t) is not None),
    ("STIR", _has("stir", "tirm")),
    ("T1 out-of-phase", _has("out of phase", "outofphase", "outphase", "out phase", "opposed", "opposed phase", "oop",
                             "opp")),
    ("T1 in-phase", _has("in phase", "inphase", "ip")),
    ("T2 HASTE", _has("haste", "ssfse", "single shot")),
    ("T2 SPIR", lambda t: _T2(t) and _FATSAT(t)),
    ("T1 C+", lambda t: (_T1(t) or _has("vibe", "lava", "thrive")(t)) and _CONTRAST(t) or _has("c+")(t)),
    ("T1 fat-sat", lambda t: (_T1(t) and _FATSAT(t)) or _has("vibe", "lava", "thrive")(t)),
    ("PD", _has("pd", "proton density", "pdw")),
    ("T2", lambda t: _T2(t) or _has("trufi", "fiesta", "bffe")(t)),
    ("T1", lambda t: _T1(t) or _has("dixon", "flash", "spgr")(t)),
)


def canonical_modality(label: str, extra: dict[str, str] | None = None) -> str:
    """The table name (or ``extra`` key) that ``label`` resolves to; raises :class:`UnknownModalityError`."""
    text = normalise(label)
    for key in extra or {}:
        if normalise(key) == text:
            return key
    if text in _EXACT:
        return _EXACT[text]
    for name, matches in KEYWORD_RULES:
        if matches(text):
            return name
    raise UnknownModalityError(label)


class UnlistedModalityError(UnknownModalityError):
    """An exact lookup (the official release's attributes file) found no entry for the label."""

    def __init__(self, label: str, table: dict[str, str]):
        super().__init__(label)
        self.table = table

    def __str__(self) -> str:
        if not self.table:
            return (f"modality label {self.label!r}: the official release's bundles take their attribute text from "
                    "its modality_attributes.json: give it (--attributes FILE), or the whole prompt (--prompt)")
        close = [k for k in self.table if normalise(k) == normalise(self.label or "")]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"modality label {self.label!r} is not in the attributes file given (--attributes; "
                f"{len(self.table)} labels, looked up exactly as the release does){hint}")


def read_attributes_file(uri: str) -> dict[str, str]:
    """A modality → attributes table in the release's ``modality_attributes.json`` format (one JSON object,
    label → text); ValueError naming the file and the bad entry."""
    from mrgen.platform import storage

    try:
        data = storage.read_json(uri)
    except FileNotFoundError as exc:
        raise ValueError(f"{exc} (the attributes file)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: expected a JSON object of modality label → attribute text")
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{uri}: entry {key!r} must be a non-empty string")
    return dict(data)


def attributes_for(label: str, extra: dict[str, str] | None = None, exact: bool = False) -> str:
    """Fat / muscle / water signal attributes of a free-text modality label (see module docstring).

    ``exact``: ``extra`` is the whole table and the label must be one of its keys (the official release's
    bundles, whose prompts carry the attribute text of its own file verbatim).
    """
    if not label or not label.strip():
        raise UnknownModalityError(label)
    extra = extra or {}
    if exact:
        if label not in extra:
            raise UnlistedModalityError(label, extra)
        return extra[label]
    name = canonical_modality(label, extra)
    if name in extra:
        return extra[name]
    by_normalised = {normalise(k): v for k, v in extra.items()}
    return by_normalised.get(normalise(name), MODALITY_TABLE[name])
