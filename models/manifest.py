"""A model bundle's files without its weights: the manifest, the part hashes, the calibration it may ship and where
the embedded bundle lives. What a driver reads before any model is loaded: no torch, no diffusers
(``models/bundle.py`` loads and saves the weights)."""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import shlex
from pathlib import Path
from typing import Any

from mrgen.datasets.modality import MODALITY_TABLE_VERSION
from mrgen.datasets.phantom import PhantomConfig, phantom_meta
from mrgen.datasets.prompt import PROMPT_TEMPLATE_VERSION
from mrgen.datasets.store import load_index, meta_digest
from mrgen.models.official import SD_LATENT_SCALING, release_manifest, release_text_dirs, with_organ_weights
from mrgen.platform import storage

MANIFEST = "mrgen_manifest.json"
FILTER_THRESHOLDS = "filter_thresholds.json"  # a calibration a bundle may ship (jobs/filter/calibrate.py writes it)
EMBEDDED = "embedded"  # the model URI naming the bundle shipped in this package (models/embedded/tiny-phantom)
BUNDLE_FORMAT = 1
DB_NAME = "D"  # how a manifest's commands name the DB that its ``db`` field says how to make (:func:`db_record`)


class BundleError(ValueError):
    """A model bundle is missing a part or holds something unreadable; the message names part and path."""


def embedded_bundle() -> str:
    """Path of the trained bundle shipped with the package (see its manifest for the command that trained it)."""
    return str(importlib.resources.files("mrgen.models") / "embedded" / "tiny-phantom")


def resolve_model_uri(uri: str) -> str:
    """``"embedded"`` → :func:`embedded_bundle`; any other URI unchanged."""
    return embedded_bundle() if uri == EMBEDDED else uri


def bundle_thresholds_file(uri: str) -> str | None:
    """The filter calibration the bundle at ``uri`` ships (``FILTER_THRESHOLDS``), None when it ships none."""
    path = storage.join(resolve_model_uri(uri), FILTER_THRESHOLDS)
    return path if storage.exists(path) else None


def dataset_versions() -> dict[str, Any]:
    return {"prompt_template_version": PROMPT_TEMPLATE_VERSION, "modality_table_version": MODALITY_TABLE_VERSION}


def new_manifest(resolution: int, latent_scaling: float, run_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest fields a trainer fills in; ``created`` and part hashes are added by :meth:`ModelBundle.save`."""
    return {"format": BUNDLE_FORMAT, **dataset_versions(), "resolution": int(resolution),
            "latent_scaling": float(latent_scaling), "run_id": run_id, "mask_encoding": "ratio", **extra}


def read_manifest(uri: str) -> dict[str, Any]:
    """The ``MANIFEST`` of the saved bundle at ``uri`` (``embedded`` too); BundleError naming it when there is none."""
    manifest = _saved_manifest(uri)
    if manifest is None:
        raise BundleError(f"model bundle {uri}: no {MANIFEST} (only saved bundles have one)")
    return manifest


def _saved_manifest(uri: str) -> dict[str, Any] | None:
    manifest_uri = storage.join(resolve_model_uri(uri), MANIFEST)
    return storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None


def _write_manifest(uri: str, manifest: dict[str, Any]) -> dict[str, Any]:
    storage.write_text(storage.join(resolve_model_uri(uri), MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def db_record(uri: str) -> dict[str, str]:
    """How a manifest names the DB at ``uri`` so that another machine can remake it: ``db``, the command that made
    it (``mrgen db phantom --out D --config NAME [--set KEY=VALUE ...]``; a DB built from files: its URI), and
    ``db_digest``, the digest of its index meta (``datasets.store.meta_digest``), which a DB remade so shares."""
    meta = load_index(uri).meta
    return {"db": _phantom_command(meta) or storage.absolute(uri), "db_digest": meta_digest(meta)}


def _phantom_command(meta: dict[str, Any]) -> str | None:
    """The `mrgen db phantom` line of the preset nearest ``meta`` (a phantom DB's), with a --set per other field."""
    if meta.get("generator") != "phantom":
        return None
    fields = meta["phantom"]

    def others(name: str) -> dict[str, Any]:
        preset = phantom_meta(PhantomConfig.from_preset(name))["phantom"]
        return {k: v for k, v in fields.items() if preset.get(k) != v}

    name = min(PhantomConfig.presets(), key=lambda n: len(others(n)))
    sets = [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in sorted(others(name).items())]
    return " ".join([f"mrgen db phantom --out {DB_NAME} --config {name}", *sets])


def describe_bundle(uri: str, organ_weights: dict[str, float] | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """The manifest of the bundle at ``uri`` (any URI), reading no weights: its own, or for a folder without one
    the fields its layout implies (the official release's conventions, ``models/official.py``). ``organ_weights``:
    the release's per-dataset organ weights (refused for our bundles)."""
    name = name or uri
    manifest = _saved_manifest(uri)
    if manifest is not None:
        if "bundle_hash" not in manifest and "parts" in manifest:
            manifest["bundle_hash"] = hash_of_parts(manifest["parts"])
    else:
        vae_uri = storage.join(uri, "vae", "config.json")
        if not storage.exists(vae_uri):
            raise BundleError(f"model bundle {name}: no manifest and part 'vae' missing (no {vae_uri}): "
                              "cannot tell the latent scaling")
        vae_config = json.loads(storage.read_text(vae_uri))
        text = release_text_dirs(uri)
        manifest = release_manifest(vae_config, *text) if text else {
            "latent_scaling": float(vae_config.get("scaling_factor", SD_LATENT_SCALING)),
            "resolution": vae_config.get("sample_size")}
    try:
        return with_organ_weights(manifest, organ_weights)
    except ValueError as exc:
        raise BundleError(f"model bundle {name}: {exc}") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_folder(folder: Path) -> dict[str, Any]:
    files = {p.relative_to(folder).as_posix(): _sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    digest = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"sha256": digest, "files": files}


def hash_of_parts(parts: dict[str, Any]) -> str:
    return hashlib.sha256("".join(f"{k}:{v['sha256']}\n" for k, v in sorted(parts.items())).encode()).hexdigest()


def bundle_hash(uri: str) -> str:
    """sha256 over the manifest's part hashes; for a folder without a manifest, over every file's content."""
    uri = resolve_model_uri(uri)
    manifest = _saved_manifest(uri) or {}
    if "parts" in manifest:
        return hash_of_parts(manifest["parts"])
    fs, path = storage.filesystem(uri)
    files = sorted(fs.find(path))
    if not files:
        raise BundleError(f"model bundle {uri}: nothing there to hash")
    h = hashlib.sha256()
    for file in files:
        rel = file[len(path.rstrip("/")) + 1:]
        if rel.split("/")[0] == MANIFEST:
            continue
        with fs.open(file, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        h.update(f"{rel}:{digest}\n".encode())
    return h.hexdigest()


def update_manifest(uri: str, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` to a saved bundle's manifest (e.g. an evaluation of it); its parts and hash are unchanged."""
    return _write_manifest(uri, {**read_manifest(uri), **fields})


def record_evaluation(uri: str, split: str, scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``scores`` (metric → its result, which names the ``db`` it ran on) as the manifest's ``evaluation.SPLIT``, each
    DB recorded as :func:`db_record` names it."""
    records = {db: db_record(db) for db in {result["db"] for result in scores.values() if "db" in result}}
    portable = {metric: {**result, **records[result["db"]]} if "db" in result else result
                for metric, result in scores.items()}
    manifest = read_manifest(uri)
    return _write_manifest(uri, {**manifest, "evaluation": {**manifest.get("evaluation", {}), split: portable}})


