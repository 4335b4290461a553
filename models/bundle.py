"""A model bundle: one folder in the diffusers layout, written to any URI and loaded back on any device.

    BUNDLE/vae/          config.json + diffusion_pytorch_model.safetensors   (AutoencoderKL)
    BUNDLE/unet/         config.json + diffusion_pytorch_model.safetensors   (UNet2DConditionModel)
    BUNDLE/controlnet/   config.json + diffusion_pytorch_model.safetensors   (ControlNetModel; optional)
    BUNDLE/text_encoder/ open_clip_config.json + open_clip_model.safetensors (TextEncoder)
    BUNDLE/scheduler/    scheduler_config.json
    BUNDLE/mrgen_manifest.json   versions, resolution, latent_scaling, run_id, created, sha256 of every file
    BUNDLE/filter_thresholds.json   optional: the filter's thresholds for this bundle (`mrgen filter calibrate`
                                    output; the manifest's ``filter`` says how it was made), which `mrgen serve`
                                    filters with by default

The official MRGen release's checkpoint folder loads unchanged: per-part ``config.json`` + ``.safetensors`` or
``.bin`` weights, ``scheduler/scheduler_config.json``, its transformers BiomedCLIP in ``text_encoder/`` (or
``text_encoder_BiomedCLIP/``) with ``tokenizer/`` (or ``tokenizer_BiomedCLIP/``), no manifest. It is recognised by
that layout and run with the release's conventions, which :func:`describe_bundle` writes as manifest fields
(``models/official.py``); other manifest-less diffusers folders keep our conventions (the text encoder then named by
the caller). No pickle: a ``.bin`` is read only through ``torch.load(weights_only=True)``; a weight file with a key
its config does not ask for, or without one it does, is refused naming the file and the key.

Writes are atomic: a local bundle is written to a hidden sibling folder and renamed into place; on object
storage the manifest is uploaded last and is the commit marker (a folder without it is an unfinished save).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from mrgen.models.autoencoder import build_autoencoder
from mrgen.models.configs import model_config
from mrgen.models.manifest import (
    BUNDLE_FORMAT, MANIFEST, BundleError, dataset_versions, hash_folder, hash_of_parts, bundle_hash, describe_bundle,
    new_manifest, resolve_model_uri,
)
from mrgen.models.mask_controller import MaskController
from mrgen.models.official import SD_LATENT_SCALING, release_text_dirs
from mrgen.models.release_text import ReleaseTextEncoder, ReleaseWeightsError
from mrgen.models.scheduler import default_scheduler_config
from mrgen.models.text_encoder import PromptEncoder, TextEncoder
from mrgen.models.unet import build_unet
from mrgen.platform import storage

SCHEDULER_CONFIG = "scheduler_config.json"
DIFFUSERS_PARTS = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "controlnet": ControlNetModel}
MODEL_PARTS = ("vae", "unet", "controlnet", "text_encoder")
REQUIRED_PARTS = ("vae", "unet", "text_encoder", "scheduler")


@dataclass
class ModelBundle:
    """The parts of a trained MRGen model; any of the model parts may be ``None`` in a partial bundle."""

    vae: AutoencoderKL | None
    unet: UNet2DConditionModel | None
    controlnet: ControlNetModel | None
    text_encoder: PromptEncoder | None
    scheduler_config: dict[str, Any] = field(default_factory=default_scheduler_config)
    manifest: dict[str, Any] = field(default_factory=dict)
    uri: str | None = field(default=None, compare=False)

    @property
    def latent_scaling(self) -> float:
        if "latent_scaling" in self.manifest:
            return float(self.manifest["latent_scaling"])
        if self.vae is not None:
            return float(self.vae.config.scaling_factor)
        raise BundleError("model bundle has neither a manifest latent_scaling nor a vae")

    @property
    def resolution(self) -> int:
        if "resolution" in self.manifest:
            return int(self.manifest["resolution"])
        if self.vae is not None:
            return int(self.vae.config.sample_size)
        raise BundleError("model bundle has neither a manifest resolution nor a vae")

    @property
    def bundle_id(self) -> str:
        """:func:`bundle_hash` of the saved/loaded bundle (``manifest['bundle_hash']``)."""
        if "bundle_hash" in self.manifest:
            return self.manifest["bundle_hash"]
        if "parts" in self.manifest:
            return hash_of_parts(self.manifest["parts"])
        if self.uri is not None:  # a folder without manifest (official layout): hash its files once
            self.manifest["bundle_hash"] = bundle_hash(self.uri)
            return self.manifest["bundle_hash"]
        raise BundleError("this bundle was never saved or loaded: it has no hash yet")

    def parts(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in MODEL_PARTS if getattr(self, name) is not None}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ModelBundle:
        for module in self.parts().values():
            module.to(device=device, dtype=dtype)
        return self

    def eval(self) -> ModelBundle:
        for module in self.parts().values():
            module.eval()
        return self

    # ----- save ---------------------------------------------------------------------------------------------
    def save(self, uri: str) -> str:
        """Write the bundle to ``uri`` (local path, file:// or s3://) atomically; returns its :func:`bundle_hash`."""
        with storage.staging_dir(uri) as tmp:
            manifest = self._write_folder(tmp)
            storage.publish_dir(tmp, uri, marker=MANIFEST)
        self.manifest = manifest
        self.uri = uri
        return manifest["bundle_hash"]

    def _write_folder(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        if self.vae is not None and "latent_scaling" in self.manifest:
            # keep the diffusers config truthful, so tools that read only vae/config.json scale right
            self.vae.register_to_config(scaling_factor=float(self.manifest["latent_scaling"]))
        for name, module in self.parts().items():
            if name == "text_encoder":
                module.save_pretrained(folder / name)
            else:
                module.save_pretrained(folder / name, safe_serialization=True)
        (folder / "scheduler").mkdir()
        scheduler = {"_class_name": self.scheduler_config.get("_class_name", "DDIMScheduler"),
                     "_diffusers_version": diffusers.__version__, **self.scheduler_config}
        (folder / "scheduler" / SCHEDULER_CONFIG).write_text(json.dumps(scheduler, indent=2, sort_keys=True))
        manifest = {"format": BUNDLE_FORMAT, **dict(self.manifest)}
        if self.vae is not None:
            manifest.setdefault("latent_scaling", float(self.vae.config.scaling_factor))
            manifest.setdefault("resolution", int(self.vae.config.sample_size))
        for key, value in dataset_versions().items():
            manifest.setdefault(key, value)
        manifest.setdefault("run_id", None)
        manifest.setdefault("mask_encoding", "ratio")  # how mask_to_condition turned organ ids into intensities
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["parts"] = {part: hash_folder(folder / part) for part in sorted(p.name for p in folder.iterdir())}
        manifest["bundle_hash"] = hash_of_parts(manifest["parts"])
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    # ----- load ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, uri: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             parts: list[str] | tuple[str, ...] | None = None, text_encoder: str | None = None,
             cache_dir: str | Path | None = None, organ_weights: dict[str, float] | None = None) -> ModelBundle:
        """Load a bundle (ours or the official release layout) from a URI.

        ``parts`` = which of vae / unet / controlnet / text_encoder / scheduler to load (default: vae, unet,
        text_encoder, scheduler required; controlnet if present). ``text_encoder`` names an open_clip model
        (``hf-hub:``, ``local-dir:`` or a folder) used when the bundle has no text encoder folder.
        ``organ_weights`` (official release bundles only): organ name → w of its mask condition (default 1.0).
        """
        uri = resolve_model_uri(uri)
        root = _local_copy(uri, cache_dir)
        if not root.is_dir():
            raise BundleError(f"model bundle {uri}: no such folder")
        manifest = describe_bundle(str(root), organ_weights, name=uri)
        wanted = list(parts) if parts is not None else list(REQUIRED_PARTS) + (
            ["controlnet"] if (root / "controlnet").is_dir() else [])
        unknown = set(wanted) - set(MODEL_PARTS) - {"scheduler"}
        if unknown:
            raise BundleError(f"unknown bundle parts {sorted(unknown)}: "
                              f"choose from {list(MODEL_PARTS) + ['scheduler']}")
        loaded: dict[str, Any] = {name: None for name in MODEL_PARTS}
        for name in wanted:
            if name == "scheduler":
                continue
            if name == "text_encoder":
                loaded[name] = _load_text_encoder(root, uri, text_encoder, device, dtype)
            else:
                loaded[name] = _load_diffusers_part(name, root, uri, device, dtype)
        scheduler_config = _load_scheduler(root, uri) if "scheduler" in wanted else default_scheduler_config()
        if "latent_scaling" not in manifest:  # a manifest of ours always has it; diffusers' default otherwise
            manifest["latent_scaling"] = _vae_config(root, uri).get("scaling_factor", SD_LATENT_SCALING)
        if "resolution" not in manifest:
            manifest["resolution"] = _vae_config(root, uri).get("sample_size")
        bundle = cls(scheduler_config=scheduler_config, manifest=manifest, uri=uri, **loaded)
        return bundle.eval()


def _weights_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
    return files[0] if files else folder


def _load_diffusers_part(name: str, root: Path, uri: str, device, dtype) -> torch.nn.Module:
    folder = root / name
    if not (folder / "config.json").is_file():
        raise BundleError(f"model bundle {uri}: part '{name}' missing (no {folder / 'config.json'})")
    try:
        model, info = DIFFUSERS_PARTS[name].from_pretrained(str(root), subfolder=name, torch_dtype=dtype,
                                                            low_cpu_mem_usage=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BundleError(f"model bundle {uri}: part '{name}' at {folder} could not be loaded: {exc}") from exc
    for kind in ("missing", "unexpected", "mismatched"):
        keys = info.get(f"{kind}_keys") or []
        if keys:  # diffusers would initialise missing weights at random and only warn
            first = keys[0][0] if isinstance(keys[0], tuple) else keys[0]
            raise BundleError(f"model bundle {uri}: part '{name}': {_weights_file(folder)} has {len(keys)} {kind} "
                              f"key(s), first {first!r}, for the model {folder / 'config.json'} describes")
    return model.to(device).eval()


def _load_text_encoder(root: Path, uri: str, name: str | None, device, dtype) -> PromptEncoder:
    folder = root / "text_encoder"
    if (folder / "open_clip_config.json").is_file():
        return TextEncoder.from_pretrained(folder, device=device, dtype=dtype)
    release = release_text_dirs(str(root))
    if release:
        try:
            encoder = ReleaseTextEncoder.from_folders(root / release[0], root / release[1])
        except (ReleaseWeightsError, OSError, ValueError) as exc:
            raise BundleError(f"model bundle {uri}: part 'text_encoder': {exc}") from None
        return encoder.to(device=device, dtype=dtype)
    if name:
        return TextEncoder.from_pretrained(name, device=device, dtype=dtype)
    raise BundleError(f"model bundle {uri}: part 'text_encoder' missing (no {folder / 'open_clip_config.json'}, "
                      "no release BiomedCLIP text_encoder/config.json) and no text encoder name given "
                      "(text_encoder='hf-hub:...' or a local open_clip folder)")


def _load_scheduler(root: Path, uri: str) -> dict[str, Any]:
    file = root / "scheduler" / SCHEDULER_CONFIG
    if not file.is_file():
        raise BundleError(f"model bundle {uri}: part 'scheduler' missing (no {file})")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"model bundle {uri}: {file} is not valid JSON: {exc}") from None
    return {k: v for k, v in config.items() if k != "_diffusers_version"}


def _vae_config(root: Path, uri: str) -> dict[str, Any]:
    file = root / "vae" / "config.json"
    if not file.is_file():
        raise BundleError(f"model bundle {uri}: no manifest and part 'vae' missing (no {file}): "
                          "cannot tell the latent scaling")
    return json.loads(file.read_text())


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("MRGEN_CACHE_DIR", Path.home() / ".cache" / "mrgen")) / "bundles"


def _local_copy(uri: str, cache_dir: str | Path | None) -> Path:
    """The bundle as a local folder: itself when local, else a cached download (reused if its manifest matches)."""
    if storage.is_local(uri):
        return Path(storage.local_path(uri)).absolute()
    manifest_uri = storage.join(uri, MANIFEST)
    remote_manifest = storage.read_text(manifest_uri) if storage.exists(manifest_uri) else None
    if remote_manifest is None and not storage.listdir(uri):
        raise BundleError(f"model bundle {uri}: nothing there")
    target = _cache_root(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    cached = target / MANIFEST
    if remote_manifest is not None and cached.is_file() and cached.read_text() == remote_manifest:
        return target
    with storage.staging_dir(str(target)) as tmp:
        storage.download_dir(uri, tmp)
        if remote_manifest is not None and (tmp / MANIFEST).read_text() != remote_manifest:
            raise BundleError(f"model bundle {uri} changed while it was being downloaded; try again")
        if remote_manifest is not None and cached.is_file() and cached.read_text() == remote_manifest:
            return target  # another process on this node finished the same download first: keep its copy
        try:
            storage.publish_dir(tmp, str(target), marker=MANIFEST if remote_manifest is not None else None)
        except OSError:
            if not (remote_manifest is not None and cached.is_file() and cached.read_text() == remote_manifest):
                raise
    return target


def build_random_bundle(name: str = "tiny", seed: int = 0,
                        overrides: dict[str, dict[str, Any]] | None = None) -> ModelBundle:
    """Every part randomly initialised from ``seed`` (the global RNG is left alone), for tests and benchmarks;
    ``overrides``: part → constructor kwargs, as :func:`~mrgen.models.configs.model_config` takes them.

    The controller's zero convolutions are drawn at random so that masks visibly change a random bundle's
    output (a fresh ``from_unet`` controller has zero output convolutions and would ignore them).
    """
    cfg = model_config(name, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_autoencoder(cfg.vae)
        unet = build_unet(cfg.unet)
        controlnet = MaskController.from_unet(unet, cfg.controlnet)
        _make_masks_matter(controlnet)
        text_cfg = dict(cfg.text_encoder, seed=seed)
        text_encoder = TextEncoder.from_config(text_cfg)
    manifest = new_manifest(cfg.resolution, latent_scaling=1.0, run_id=f"random-{name}-{seed}", model_config=name)
    return ModelBundle(vae=vae, unet=unet, controlnet=controlnet, text_encoder=text_encoder, manifest=manifest).eval()


@torch.no_grad()
def _make_masks_matter(controlnet: ControlNetModel) -> None:
    controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0.0, 0.3)
    for conv in (controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks):
        conv.weight.normal_(0.0, 0.1)
