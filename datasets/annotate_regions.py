"""`mrgen db annotate-regions`: zero-shot body-region labels for every slice (paper §3.2, appendix B.1).

An open_clip model (BiomedCLIP at paper scale) embeds each slice and the six region descriptions
"This is a radiology image that shows $region$ of a human body, and probably contains $organ$."; the softmax over
the six cosine similarities (times the model's logit scale) gives a region and its confidence, and a slice whose
confidence is below the threshold (0.40) stays unlabeled (null). Classification runs in a Ray Data actor pool,
each actor loading the model once.

The result is a NEW version of the DB: every shard is rewritten with its ``region`` and ``prompt`` updated under
``v<k+1>/`` (the same volumes per shard), and ``index.json`` is replaced last, so readers see either the old
version or the whole new one. The shards of version k are left as they were.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from huggingface_hub import hf_hub_download
from PIL import Image

from mrgen.datasets.prompt import build_prompt
from mrgen.datasets.schema import COLUMN_NAMES, REGIONS, Column, decode_image
from mrgen.datasets.store import ShardWriter, load_index, read_slices, shard_uris
from mrgen.platform import storage
from mrgen.platform.cluster import init_ray
from mrgen.platform.progress import Progress

# Appendix B.1: (region, organs) pairs, in the order of schema.REGIONS.
REGION_ORGANS = (
    ("Upper Thoracic Region", "lung, ribs and clavicles"),
    ("Middle Thoracic Region", "lung, ribs and heart"),
    ("Lower Thoracic Region", "lung, ribs and liver"),
    ("Upper Abdominal Region", "liver, spleen, pancreas, kidney and stomach"),
    ("Lower Abdominal Region", "kidney, small intestine, colon, cecum and appendix"),
    ("Pelvic Region", "rectum, bladder, prostate/uterus and pelvic bones"),
)
REGION_TEMPLATE = "This is a radiology image that shows {region} of a human body, and probably contains {organ}."
assert tuple(r.lower() for r, _ in REGION_ORGANS) == REGIONS


class RegionModelError(RuntimeError):
    """The region model cannot be found or loaded; the message says where it was looked for."""


def region_prompts() -> list[str]:
    return [REGION_TEMPLATE.format(region=region, organ=organ) for region, organ in REGION_ORGANS]


def check_model_name(name: str | None) -> str:
    """Fail fast, in the driver, on a model the actors could not load."""
    if not name:
        raise RegionModelError("no region model: pass --model local-dir:/path (an open_clip folder) or set "
                               "db.region_model")
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise RegionModelError(f"{name}: no open_clip_config.json in {folder} (an open_clip model folder is "
                                   "expected)")
        return name
    if name.startswith("hf-hub:"):
        try:
            hf_hub_download(name[len("hf-hub:"):], "open_clip_config.json")
        except Exception as exc:  # noqa: BLE001 - offline, unreachable or unknown repo all end here
            offline = os.environ.get("HF_HUB_OFFLINE", "0")
            raise RegionModelError(f"{name}: cannot fetch from the Hugging Face hub (HF_HUB_OFFLINE={offline}): "
                                   f"{type(exc).__name__}: {exc}; download the model and pass local-dir:/path"
                                   ) from None
        return name
    raise RegionModelError(f"{name!r}: expected 'local-dir:/path' or 'hf-hub:org/name'")


class RegionClassifier:
    """Ray Data actor: loads the open_clip model once, then classifies batches of slices."""

    def __init__(self, model_name: str, threshold: float):
        import open_clip
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, device="cpu")
        self.model.eval()
        tokenizer = open_clip.get_tokenizer(model_name)
        with torch.no_grad():
            self.text = self.model.encode_text(tokenizer(region_prompts()), normalize=True)
            self.scale = float(self.model.logit_scale.exp())
        self.threshold = threshold

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax over the six regions for float [0, 1] slices [B, H, W]."""
        pixels = self.torch.stack([
            self.preprocess(Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)).convert("RGB"))
            for im in images])
        with self.torch.no_grad():
            features = self.model.encode_image(pixels, normalize=True)
            return (self.scale * features @ self.text.T).softmax(dim=-1).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.stack([decode_image(b, int(h), int(w)) for b, h, w in zip(batch["image"], batch["height"],
                                                                              batch["width"])])
        probs = self.probabilities(images)
        best = probs.argmax(axis=1)
        confidence = probs.max(axis=1).astype(np.float32)
        region_index = np.where(confidence >= self.threshold, best, -1).astype(np.int8)
        return {"slice_id": batch["slice_id"], "region_index": region_index, "confidence": confidence}


@dataclass
class AnnotateReport:
    uri: str
    model: str
    threshold: float
    version: int = 0
    slices: int = 0
    labeled: int = 0
    regions: dict[str, int] = field(default_factory=dict)
    mean_confidence: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.regions.items())
        return (f"annotated {self.slices} slices of {self.uri} with {self.model} in {self.seconds:.1f}s: "
                f"{self.labeled} labeled, {self.slices - self.labeled} below {self.threshold:.2f} (null); "
                f"mean confidence {self.mean_confidence:.3f}; version {self.version} [{counts}]")


def classify_slices(uri: str, model: str, threshold: float, actors: int = 1, batch_size: int = 32,
                    cpus_per_actor: float = 0.25) -> dict[str, tuple[int, float]]:
    """slice_id → (region index or -1, confidence), computed in a Ray Data actor pool."""
    dataset = read_slices(uri, columns=["slice_id", "height", "width", "image"])
    dataset = dataset.map_batches(
        RegionClassifier, fn_constructor_kwargs={"model_name": model, "threshold": threshold},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, batch_size=batch_size,
        batch_format="numpy")
    total = load_index(uri).rows
    progress = Progress("annotate-regions", total=total)
    results: dict[str, tuple[int, float]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for sid, index, conf in zip(batch["slice_id"], batch["region_index"], batch["confidence"]):
            results[str(sid)] = (int(index), float(conf))
        progress.update(len(batch["slice_id"]), labeled=sum(1 for r, _ in results.values() if r >= 0))
    if len(results) != total:
        raise RuntimeError(f"region classifier returned {len(results)} of {total} slices")
    return results


def _relabel(table: pa.Table, results: dict[str, tuple[int, float]]) -> pa.Table:
    regions = [REGIONS[results[sid][0]] if results[sid][0] >= 0 else None
               for sid in table.column("slice_id").to_pylist()]
    rows = table.select(["modality", "modality_attributes", "organs"]).to_pylist()
    prompts = [build_prompt(r["modality"], r["modality_attributes"] or None, region, r["organs"] or ())
               for r, region in zip(rows, regions)]
    table = table.set_column(table.column_names.index("region"), "region", pa.array(regions, pa.string()))
    return table.set_column(table.column_names.index("prompt"), "prompt", pa.array(prompts, pa.string()))


def _extra_columns(schema: pa.Schema) -> tuple[Column, ...]:
    extra = []
    for f in schema:
        if f.name not in COLUMN_NAMES:
            description = (f.metadata or {}).get(b"description", b"").decode()
            extra.append(Column(f.name, f.type, description, f.nullable))
    return tuple(extra)


def annotate_regions(uri: str, model: str | None, threshold: float = 0.40, actors: int = 1,
                     batch_size: int = 32, cpus_per_actor: float = 0.25) -> AnnotateReport:
    """Label every slice's region and publish the DB as a new version (see the module docstring)."""
    started = time.monotonic()
    model = check_model_name(model)
    index = load_index(uri)
    init_ray()
    results = classify_slices(uri, model, threshold, actors, batch_size, cpus_per_actor)
    report = AnnotateReport(uri=uri, model=model, threshold=threshold, version=index.version + 1, slices=len(results))
    labeled = [REGIONS[r] for r, _ in results.values() if r >= 0]
    report.labeled = len(labeled)
    report.regions = {region: labeled.count(region) for region in REGIONS if region in labeled}
    report.mean_confidence = float(np.mean([c for _, c in results.values()])) if results else 0.0

    meta = {**index.meta, "regions": {"model": model, "threshold": threshold, "labeled": report.labeled,
                                      "unlabeled": report.slices - report.labeled, "from_version": index.version}}
    writer = None
    progress = Progress("annotate-regions write", total=len(index.shards))
    for shard, shard_uri in zip(index.shards, shard_uris(uri, index.shards)):
        fs, path = storage.arrow_filesystem(shard_uri)
        table = pq.read_table(path, filesystem=fs)
        if writer is None:
            writer = ShardWriter(uri, version=report.version, extra=_extra_columns(table.schema), meta=meta)
        writer.write(_relabel(table, results), shard.volumes)
        progress.update(1)
    if writer is not None:
        writer.commit()
    report.seconds = time.monotonic() - started
    print(report.summary(), file=sys.stderr, flush=True)
    return report
