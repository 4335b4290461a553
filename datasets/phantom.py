"""The embedded default MRGen-DB: seeded synthetic abdominal MR volumes (`mrgen db phantom`).

Three datasets mirror the paper's setting (§4, B.2):

* ``phantom-src``  — the source modality (:data:`SOURCE_MODALITY`), every volume with organ masks, train + test;
* ``phantom-tgt``  — the target modality (:data:`TARGET_MODALITY`): training volumes WITHOUT masks, test volumes
  WITH masks (for evaluation only);
* ``phantom-pool`` — volumes in other modalities (``pool_modalities``), for text-guided pretraining, annotated in
  the ``pool_masks`` modalities (the controller's other mask-annotated data); each pool body is rendered in every
  pool modality (registered, like multi-sequence studies).

Anatomy comes from :mod:`phantom_anatomy`, signal from :mod:`phantom_mr`. Each slice's region is known from its
height in the body. Preprocessing follows C.1 per dataset origin: the source and target datasets stand for
annotated collections (clip to ``clip_percentiles`` of the volume, then [0, 1]; applied to the target's
training volumes too so that its train and test intensities match); the pool stands for Radiopaedia-like
data (min-max to [0, 1]).

At volume (the ``million`` preset: 10⁶ slices) each body is rendered once and written ``rescans`` times, each a
fresh acquisition of it (its own bias field and noise, volume id ``<id>-r<k>``): distinct volumes for the price of
the noise, not of the anatomy. Shards close at ``shard_rows`` rows or ``shard_bytes`` bytes of pixels.

Volumes are rendered and written shard by shard: as Ray tasks in parallel when Ray is initialised, otherwise
in this process. The result depends only on the config (a shard's content is a function of its volumes'
seeds). Rebuilding into a DB that already holds the same phantom config is a no-op; a different config is
written as the next version and published by replacing ``index.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from mrgen.datasets.modality import MODALITY_TABLE_VERSION, UnknownModalityError, attributes_for
from mrgen.datasets.phantom_anatomy import ORGAN_IDS, rasterise, region_of, sample_anatomy
from mrgen.datasets.phantom_mr import acquire, sequence_for, signal, tissue_maps
from mrgen.datasets.prompt import PROMPT_TEMPLATE_VERSION, build_prompt
from mrgen.datasets.schema import encode_image, encode_mask, encode_organ_map, slice_id
from mrgen.datasets.store import DBIndex, ShardInfo, ShardWriter, shard_groups, try_load_index, volume_key
from mrgen.platform import storage
from mrgen.platform.config import ConfigBase, preset
from mrgen.platform.progress import Progress
# Ray where a DB is built: the CLI imports the phantom's config at its start-up

__all__ = ["ORGAN_IDS", "SOURCE_MODALITY", "TARGET_MODALITY", "PhantomConfig", "build_phantom_db", "plan_volumes",
           "render_volume"]

SOURCE_MODALITY = "T1 in-phase MRI"
TARGET_MODALITY = "T2 SPIR MRI"
SOURCE_DATASET, TARGET_DATASET, POOL_DATASET = "phantom-src", "phantom-tgt", "phantom-pool"
_DATASET_CODES = {SOURCE_DATASET: 1, TARGET_DATASET: 2, POOL_DATASET: 3}


class PhantomConfig(ConfigBase):
    """Size and acquisition of the phantom DB."""

    section = "phantom"
    seed: int = Field(0, ge=0, description="everything (anatomy, noise, bias) derives from this seed")
    resolution: int = Field(64, ge=32, le=1024, description="slices are resolution x resolution")
    slices_per_volume: int = Field(20, ge=4, le=512, description="axial slices per volume, pelvis to lung bases")
    volumes: int = Field(3, ge=2, description="volumes in each of phantom-src and phantom-tgt, and bodies in "
                                              "phantom-pool")
    test_volumes: int = Field(1, ge=1, description="of `volumes`, how many form the test split (src and tgt)")
    pool_test_volumes: int = Field(0, ge=0, description="of the pool bodies, how many form the pool's test split")
    pool_modalities: list[str] = Field(default_factory=lambda: ["T1 MRI", "T2 MRI", "T1 out-of-phase MRI"],
                                       description="modality labels rendered for phantom-pool")
    pool_masks: list[str] = Field(default_factory=list,
                                  description="pool modalities whose volumes also carry organ masks: annotated "
                                              "collections in other modalities, as MRGen-DB has (the controller then "
                                              "learns masks in several modalities, not only the source's)")
    source_modality: str = Field(SOURCE_MODALITY, description="modality of phantom-src (with masks)")
    target_modality: str = Field(TARGET_MODALITY, description="modality of phantom-tgt (masks only on test volumes)")
    fov_mm: float = Field(380.0, gt=0, description="in-plane field of view; pixel spacing = fov_mm / resolution")
    noise: float = Field(0.02, ge=0, le=0.5, description="Rician noise std as a fraction of the 99th signal percentile")
    bias: float = Field(0.25, ge=0, le=0.9, description="amplitude of the smooth multiplicative bias field")
    clip_percentiles: tuple[float, float] = Field((0.5, 99.5), description="intensity clip of annotated datasets (C.1)")
    shard_rows: int = Field(512, ge=1, description="target rows per shard (shards hold whole volumes of one "
                                                   "dataset/split/modality)")
    shard_bytes: int | None = Field(None, ge=1, description="target bytes of pixels (image + mask, uncompressed) per "
                                                            "shard; a shard closes at whichever of shard_rows and "
                                                            "shard_bytes it reaches first (None: rows only)")
    rescans: int = Field(1, ge=1, le=1000, description="each volume written this many times, each a fresh acquisition "
                                                       "of the same body (own bias field and noise, volume id "
                                                       "'<id>-r<k>', the body's split): 10^6 slices without rendering "
                                                       "10^6 slices of anatomy")
    target_train_masks: bool = Field(False, description="also annotate phantom-tgt's training volumes: the training "
                                                        "data of an oracle segmenter, which bounds what any method "
                                                        "reaches (no MRGen step may see them)")

    @model_validator(mode="after")
    def _check(self) -> PhantomConfig:
        if self.test_volumes >= self.volumes:
            raise ValueError(f"test_volumes ({self.test_volumes}) must be < volumes ({self.volumes})")
        if self.pool_test_volumes >= self.volumes:
            raise ValueError(f"pool_test_volumes ({self.pool_test_volumes}) must be < volumes ({self.volumes})")
        if not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        return self

    @model_validator(mode="after")
    def _pool_masks_in_pool(self) -> PhantomConfig:
        unknown = [m for m in self.pool_masks if m not in self.pool_modalities]
        if unknown:
            raise ValueError(f"pool_masks {unknown} are not among pool_modalities {self.pool_modalities}")
        return self

    @field_validator("source_modality", "target_modality", "pool_modalities")
    @classmethod
    def _renderable(cls, value: str | list[str]) -> str | list[str]:
        for label in [value] if isinstance(value, str) else value:
            try:
                sequence_for(label)
            except UnknownModalityError as exc:
                raise ValueError(str(exc)) from None
        return value


@preset(PhantomConfig, "tiny")
def _tiny() -> dict:
    return {"resolution": 64, "slices_per_volume": 16, "volumes": 3, "test_volumes": 1}


@preset(PhantomConfig, "small")
def _small() -> dict:
    """Ten bodies, masks on the source only: quick to build, and enough to train and evaluate at 64x64 (the
    benchmarks' DB; the default until December 2026)."""
    return {"resolution": 64, "slices_per_volume": 24, "volumes": 10, "test_volumes": 2, "pool_test_volumes": 1,
            "pool_modalities": ["T1 MRI", "T2 MRI", "T1 out-of-phase MRI", "T1 fat-sat MRI", "T2 HASTE MRI",
                                "PD MRI", "STIR MRI", "DWI MRI", "ADC MRI", "T1 C+ MRI"]}


@preset(PhantomConfig, "bundle-db")
def _bundle_db() -> dict:
    """The DB the embedded generator trained on (the default until 2026-12-07): MRGen-DB's situation in small, many
    bodies with masks in five modalities (the source and four pool modalities), none in the target. On ten bodies
    with source masks only the tiny controller learns its training masks by heart and carries nothing over to the
    target modality (docs/results.md, 2026-12-04 night)."""
    annotated = ["T1 MRI", "T2 MRI", "T2 HASTE MRI", "STIR MRI"]
    return {**_small(), "volumes": 100, "pool_modalities": annotated, "pool_masks": annotated}


TEST_BODIES = 40


@preset(PhantomConfig, "default")
def _default() -> dict:
    """What `mrgen db phantom` and `mrgen demo` build: ``bundle-db``'s 100 bodies, all of them training volumes now,
    plus 40 new bodies (never rendered before, so no stage of the embedded generator saw them) as the source and
    target test split. On 40 volumes the paired interval of a Dice difference narrows to about ±3 points
    (docs/results.md, 2026-12-07); on the former 2 it spanned the whole effect."""
    base = _bundle_db()
    return {**base, "volumes": base["volumes"] + TEST_BODIES, "test_volumes": TEST_BODIES}


@preset(PhantomConfig, "paper")
def _paper() -> dict:
    """512², about CHAOS-MRI T2-SPIR's size per dataset (§B.2: 16 + 4 volumes, ~32 slices each)."""
    return {**_small(), "resolution": 512, "slices_per_volume": 32, "volumes": 20, "test_volumes": 4,
            "pool_test_volumes": 1, "shard_rows": 256}


@preset(PhantomConfig, "million")
def _million() -> dict:
    """The default's 840 volumes (20,160 slices) in 50 acquisitions each: 1,008,000 slices at 64² (about 15 GB),
    in shards of 64 MiB of pixels (~3,300 slices)."""
    return {**_default(), "rescans": 50, "shard_rows": 8192, "shard_bytes": 64 * 2**20}


@dataclass(frozen=True)
class VolumeSpec:
    dataset: str
    volume_id: str
    body: int  # index of the sampled body within the dataset (pool modalities share bodies)
    modality: str
    split: str
    with_mask: bool
    clip: bool
    rescan: int = 0  # which acquisition of the body (0: the volume as a DB without rescans holds it)


def plan_volumes(config: PhantomConfig) -> list[VolumeSpec]:
    n, n_test = config.volumes, config.test_volumes
    specs = []
    for dataset, modality, masks_on_train in ((SOURCE_DATASET, config.source_modality, True),
                                              (TARGET_DATASET, config.target_modality, config.target_train_masks)):
        for i in range(n):
            split = "test" if i >= n - n_test else "train"
            specs.append(VolumeSpec(dataset, f"vol{i:03d}", i, modality, split,
                                    masks_on_train or split == "test", True))
    for modality in config.pool_modalities:
        for i in range(n):
            split = "test" if i >= n - config.pool_test_volumes else "train"
            specs.append(VolumeSpec(POOL_DATASET, f"vol{i:03d}-{_slug(modality)}", i, modality, split,
                                    modality in config.pool_masks, False))
    if config.rescans == 1:
        return specs
    return [dataclasses.replace(s, volume_id=f"{s.volume_id}-r{k:03d}", rescan=k) if k else s
            for s in specs for k in range(config.rescans)]


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace("+", "plus")).strip("-")


def _rng(config: PhantomConfig, *key: int | str) -> np.random.Generator:
    words = [config.seed] + [k if isinstance(k, int) else int(hashlib.sha1(k.encode()).hexdigest()[:8],
                                                              16) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def preprocess(volume: np.ndarray, clip: bool, percentiles: tuple[float, float]) -> np.ndarray:
    """C.1: clip to the percentiles then [0, 1] (annotated data), or min-max to [0, 1]."""
    if clip:
        lo, hi = np.percentile(volume, percentiles)
        volume = np.clip(volume, lo, hi)
    else:
        lo, hi = float(volume.min()), float(volume.max())
    return ((volume - lo) / max(hi - lo, 1e-8)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _cached_body(seed: int, resolution: int, slices: int, code: int, body: int):
    return _body(seed, resolution, slices, code, body)


@functools.lru_cache(maxsize=16)
def _cached_signal(seed: int, resolution: int, slices: int, code: int, body: int, modality: str) -> np.ndarray:
    return signal(_cached_body(seed, resolution, slices, code, body)[2], sequence_for(modality))


def _body(seed: int, resolution: int, slices: int, code: int, body: int):
    """Organ labels, slice heights and tissue parameter maps of one sampled body."""
    anatomy_rng = np.random.default_rng(np.random.SeedSequence([seed, code, body]))
    anatomy = sample_anatomy(anatomy_rng)
    tissue, labels, zeta = rasterise(anatomy, slices, resolution)
    maps = tissue_maps(tissue, anatomy.liver_fat, anatomy.tissue_jitter, anatomy_rng)
    return labels, zeta, maps


def render_volume(config: PhantomConfig, spec: VolumeSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """Preprocessed image float32 [Z,H,W], organ labels uint8 [Z,H,W], slice heights [Z], raw volume bytes."""
    code = _DATASET_CODES[spec.dataset]
    shape = (config.seed, config.resolution, config.slices_per_volume, code, spec.body)
    # Small bodies and their noise-free signal are kept in memory between pool modalities and rescans.
    if config.resolution ** 2 * config.slices_per_volume <= 96 * 96 * 32:
        labels, zeta, _ = _cached_body(*shape)
        clean = _cached_signal(*shape, spec.modality)
    else:
        labels, zeta, maps = _body(*shape)
        clean = signal(maps, sequence_for(spec.modality))
    key = (code, spec.body, spec.modality) + ((spec.rescan,) if spec.rescan else ())
    raw = acquire(clean, _rng(config, *key), config.noise, config.bias)
    image = preprocess(raw, spec.clip, config.clip_percentiles)
    return image, labels, zeta, raw.tobytes()


def volume_table(config: PhantomConfig, spec: VolumeSpec) -> pa.Table:
    image, labels, zeta, raw = render_volume(config, spec)
    n = image.shape[0]
    attributes = attributes_for(spec.modality)
    regions = [region_of(float(z)) for z in zeta]
    if spec.with_mask:
        present = {i: (labels == i).any(axis=(1, 2)) for i in sorted(ORGAN_IDS)}
        organs = [[ORGAN_IDS[i] for i in present if present[i][k]] for k in range(n)]
    else:
        organs = [[] for _ in range(n)]

    def same(value: Any) -> list[Any]:
        return [value] * n

    return pa.table({
        "slice_id": [slice_id(spec.dataset, spec.volume_id, k) for k in range(n)], "dataset": same(spec.dataset),
        "volume_id": same(spec.volume_id), "slice_index": list(range(n)), "split": same(spec.split),
        "modality": same(spec.modality), "modality_attributes": same(attributes), "region": regions,
        "organs": organs, "prompt": [build_prompt(spec.modality, attributes, r, o) for r, o in zip(regions, organs)],
        "height": same(config.resolution), "width": same(config.resolution),
        "image": [encode_image(i) for i in image], "has_mask": same(spec.with_mask),
        "mask": [encode_mask(m) for m in labels] if spec.with_mask else same(None),
        "organ_map": same(encode_organ_map(ORGAN_IDS)), "pixel_spacing": same([config.fov_mm / config.resolution] * 2),
        "source_file": same(f"phantom://{spec.dataset}/{spec.volume_id}"),
        "source_sha256": same(hashlib.sha256(raw).hexdigest())})


def shard_plan(config: PhantomConfig) -> list[list[VolumeSpec]]:
    """Volumes grouped by (dataset, split, modality, has_mask), chunked to ``shard_rows`` rows and ``shard_bytes``
    bytes of pixels. A body's rescans are consecutive, so a task renders each body's anatomy once, or twice where a
    shard boundary falls inside its rescans."""
    groups: dict[tuple, list[VolumeSpec]] = {}
    for spec in plan_volumes(config):
        groups.setdefault((spec.dataset, spec.split, spec.modality, spec.with_mask), []).append(spec)
    pixels = config.resolution ** 2 * config.slices_per_volume
    return [[g[i] for i in chunk] for g in groups.values()
            for chunk in shard_groups([(config.slices_per_volume, pixels * (5 if s.with_mask else 4)) for s in g],
                                      config.shard_rows, config.shard_bytes)]


def write_shard(uri: str, version: int, config: PhantomConfig, specs: list[VolumeSpec]) -> ShardInfo:
    table = pa.concat_tables([volume_table(config, s) for s in specs])
    return ShardWriter(uri, version).write(table, [volume_key(s.dataset, s.volume_id) for s in specs])


_ADDED_FIELDS = {"pool_masks": [], "shard_bytes": None, "rescans": 1}


def phantom_meta(config: PhantomConfig) -> dict[str, Any]:
    """The index ``meta`` a phantom DB of ``config`` carries (its ``store.meta_digest`` names the DB's content)."""
    # fields at the default they had when added are left out: older DBs keep their digest (the embedded bundle
    # records it)
    fields = config.model_dump(mode="json", exclude={k for k, v in _ADDED_FIELDS.items() if getattr(config, k) == v})
    return {"generator": "phantom", "phantom": fields,
            "source_modality": config.source_modality,
            "target_modality": config.target_modality, "source_dataset": SOURCE_DATASET,
            "target_dataset": TARGET_DATASET,
            "pool_dataset": POOL_DATASET, "organ_map": {str(k): v for k, v in ORGAN_IDS.items()},
            "modality_table_version": MODALITY_TABLE_VERSION, "prompt_template_version": PROMPT_TEMPLATE_VERSION}


def build_phantom_db(out_uri: str, config: PhantomConfig | None = None, use_ray: bool | None = None) -> DBIndex:
    """Render the phantom into an MRGen-DB at ``out_uri`` and publish its index; returns the index.

    ``use_ray=None`` renders shards as Ray tasks when Ray is initialised in this process.
    """
    config = config or PhantomConfig.load("tiny")
    out_uri = storage.absolute(out_uri)  # shards are written by Ray tasks, which run in other directories
    meta = phantom_meta(config)
    previous = try_load_index(out_uri)
    if (previous is not None and previous.meta.get("phantom") == meta["phantom"]
            and previous.meta.get("generator") == "phantom"):
        print(f"[phantom] {out_uri} already holds this phantom (version {previous.version}, {previous.rows} slices)",
              flush=True)
        return previous
    version = previous.version + 1 if previous is not None else 1
    plan = shard_plan(config)
    progress = Progress("phantom volumes", total=sum(len(g) for g in plan))
    if use_ray is None:
        import ray

        use_ray = ray.is_initialized()
    shards: list[ShardInfo] = []
    if use_ray:
        import ray

        task = ray.remote(num_cpus=1, max_retries=2)(write_shard)
        pending = {task.remote(out_uri, version, config, group): len(group) for group in plan}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            shards.append(ray.get(done[0]))
            progress.update(pending.pop(done[0]), shards=len(shards))
    else:
        for group in plan:
            shards.append(write_shard(out_uri, version, config, group))
            progress.update(len(group), shards=len(shards))
    index = ShardWriter(out_uri, version, keep=shards, meta=meta).commit()
    progress.close(slices=index.rows)
    return index
