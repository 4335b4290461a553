"""The official MRGen release (github haoningwu3639/MRGen) as a model bundle: how it is recognised, and the
conventions its networks were trained with, written as the manifest fields our own bundles record.

Recognised by layout: a folder with no ``mrgen_manifest.json`` whose text encoder folder (``text_encoder/``, or
``text_encoder_BiomedCLIP/`` as in the release's ``ckpt/`` template) holds a transformers ``config.json`` with a
``text_config`` (the release's BiomedCLIP) and whose tokenizer folder (``tokenizer/`` or ``tokenizer_BiomedCLIP/``)
holds ``vocab.txt``; ``vae/``, ``unet/``, ``controlnet/`` and ``scheduler/`` are the usual diffusers parts. Nothing
is renamed or converted. Its conventions (:func:`release_manifest`):

* prompt ``", ".join([modality, attributes, region, dataset label list])`` (``prompt_template`` ``official``), the
  attributes taken verbatim from a ``modality_attributes.json`` the user gives (the release's format: label →
  text; this project ships none of its text);
* 77 BertTokenizer tokens, padding attended, last hidden states (``models/release_text.py``);
* mask condition background −1, organ → 2·w − 1 (``official_vocabulary``; weights per dataset, default 1.0);
* latent scale ``vae/config.json``'s ``scaling_factor``, else diffusers' default 0.18215 (the release relies on it);
* DDIM built from ``scheduler/scheduler_config.json`` (a PNDM config: steps_offset 1, set_alpha_to_one false).

A manifest-less folder with any other text encoder is read as a plain diffusers folder with our conventions.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mrgen.models.condition import official_vocabulary
from mrgen.platform import storage

RELEASE_LAYOUT = "mrgen-release"
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_BiomedCLIP")
TOKENIZER_DIRS = ("tokenizer", "tokenizer_BiomedCLIP")
SD_LATENT_SCALING = 0.18215  # diffusers' AutoencoderKL default, used when vae/config.json has none


def find_part(uri: str, names: tuple[str, ...], file: str) -> str | None:
    """The first of the folders ``names`` under ``uri`` that holds ``file`` (None: none does)."""
    for name in names:
        if storage.exists(storage.join(uri, name, file)):
            return name
    return None


def release_text_dirs(uri: str) -> tuple[str, str] | None:
    """(text encoder folder, tokenizer folder) of a release-style BiomedCLIP under ``uri``, else None."""
    text_dir = find_part(uri, TEXT_ENCODER_DIRS, "config.json")
    if text_dir is None:
        return None
    try:
        config = json.loads(storage.read_text(storage.join(uri, text_dir, "config.json")))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "text_config" not in config:
        return None
    return text_dir, find_part(uri, TOKENIZER_DIRS, "vocab.txt") or TOKENIZER_DIRS[0]


def is_release(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("layout") == RELEASE_LAYOUT


def release_manifest(vae_config: Mapping[str, Any], text_dir: str, tokenizer_dir: str,
                     organ_weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The manifest fields of a release folder (see the module docstring)."""
    return {"layout": RELEASE_LAYOUT, "prompt_template": "official", "text_encoder_dir": text_dir,
            "tokenizer_dir": tokenizer_dir, "text_context_length": 77, "text_attention_mask": False,
            "latent_scaling": float(vae_config.get("scaling_factor", SD_LATENT_SCALING)),
            "resolution": vae_config.get("sample_size"),
            **official_vocabulary(organ_weights).manifest_fields()}


def with_organ_weights(manifest: dict[str, Any], organ_weights: Mapping[str, float] | None) -> dict[str, Any]:
    """``manifest`` with the release's condition for ``organ_weights`` (name → w); only release bundles take them:
    ours were trained on their own organ vocabulary."""
    if not organ_weights:
        return manifest
    if not is_release(manifest):
        raise ValueError("organ weights apply to the official release's bundles only; this bundle was trained on "
                         "its own organ vocabulary (see its manifest)")
    return {**manifest, **official_vocabulary(organ_weights).manifest_fields()}
