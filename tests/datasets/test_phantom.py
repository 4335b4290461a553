"""The embedded phantom DB: determinism, anatomy in the masks, the paper's source/target/pool setting, schema."""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from mrgen.datasets.modality import attributes_for
from mrgen.datasets.phantom import (ORGAN_IDS, POOL_DATASET, SOURCE_MODALITY, TARGET_DATASET, TARGET_MODALITY,
                                    PhantomConfig, build_phantom_db, plan_volumes, render_volume)
from mrgen.datasets.prompt import build_prompt
from mrgen.datasets.schema import REGIONS, decode_image, decode_mask, decode_organ_map, validate_slice_table
from mrgen.datasets.store import INDEX_COLUMNS, load_index, read_table, shard_uris
from mrgen.platform.config import ConfigError

TINY = PhantomConfig.load("tiny")
REGION_ORDER = ["pelvic region", "lower abdominal region", "upper abdominal region", "lower thoracic region"]


@pytest.fixture(scope="module")
def tables(tiny_db):
    return {name: read_table(tiny_db, dataset=name) for name in ("phantom-src", "phantom-tgt", "phantom-pool")}


def _volumes(table):
    rows = collections.defaultdict(list)
    for row in table.to_pylist():
        rows[row["volume_id"]].append(row)
    return {k: sorted(v, key=lambda r: r["slice_index"]) for k, v in rows.items()}


def _masks(rows):
    return np.stack([decode_mask(r["mask"], r["height"], r["width"]) for r in rows])


def _images(rows):
    return np.stack([decode_image(r["image"], r["height"], r["width"]) for r in rows])


def test_constants_and_presets():
    assert ORGAN_IDS == {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney", 5: "bladder", 6: "prostate"}
    assert SOURCE_MODALITY != TARGET_MODALITY
    assert {"tiny", "small", "default", "paper"} <= set(PhantomConfig.presets())
    default = PhantomConfig.load("default")  # masks in the source and every pool modality, never in the target
    assert default.pool_masks == default.pool_modalities and default.volumes > PhantomConfig.load("small").volumes
    assert not default.target_train_masks and default.target_modality not in default.pool_masks
    assert PhantomConfig.load("paper").resolution == 512
    # the default's test volumes: at least 20 per dataset, bodies the embedded generator's DB never rendered
    trained_on = {(s.dataset, s.body) for s in plan_volumes(PhantomConfig.load("bundle-db"))}
    tests = [s for s in plan_volumes(default) if s.split == "test" and s.dataset != POOL_DATASET]
    assert len([s for s in tests if s.dataset == TARGET_DATASET]) >= 20
    assert len({s.dataset for s in tests}) == 2 and not {(s.dataset, s.body) for s in tests} & trained_on
    assert TINY.resolution == 64


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="test_volumes"):
        PhantomConfig.load("tiny", ["test_volumes=3"])
    with pytest.raises(ConfigError, match="resolution"):
        PhantomConfig.load("tiny", ["resolution=8"])
    with pytest.raises(ConfigError, match="banana"):
        PhantomConfig.load("tiny", ["pool_modalities=[banana scan]"])
    with pytest.raises(ConfigError, match="CT"):  # known label, but the phantom has no CT physics
        PhantomConfig.load("tiny", ["target_modality=CT abdomen"])
    with pytest.raises(ConfigError, match="pool_masks.*PD MRI"):
        PhantomConfig.load("tiny", ["pool_masks=[PD MRI]"])


def test_pool_masks_annotate_those_pool_modalities_only():
    config = TINY.with_overrides({"pool_masks": [TINY.pool_modalities[0]]})
    annotated = {(s.modality, s.with_mask) for s in plan_volumes(config) if s.dataset == "phantom-pool"}
    assert annotated == {(m, m == TINY.pool_modalities[0]) for m in TINY.pool_modalities}
    spec = next(s for s in plan_volumes(config) if s.with_mask and s.dataset == "phantom-pool")
    plain = next(s for s in plan_volumes(TINY) if s.volume_id == spec.volume_id)
    assert render_volume(config, spec)[0].tobytes() == render_volume(TINY, plain)[0].tobytes()  # same images
    from mrgen.datasets.phantom import phantom_meta
    from mrgen.datasets.store import meta_digest

    for added in ("pool_masks", "shard_bytes", "rescans"):  # older DBs keep their digest
        assert added not in phantom_meta(TINY)["phantom"], added
    assert meta_digest(phantom_meta(TINY.with_overrides({"rescans": 2}))) != meta_digest(phantom_meta(TINY))
    assert meta_digest(phantom_meta(config)) != meta_digest(phantom_meta(TINY))


def test_rendering_is_deterministic_for_a_seed():
    spec = plan_volumes(TINY)[0]
    a_img, a_lab, a_z, a_raw = render_volume(TINY, spec)
    b_img, b_lab, b_z, b_raw = render_volume(TINY, spec)
    assert a_raw == b_raw and np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    other = TINY.with_overrides({"seed": 1})
    c_img, c_lab, _, c_raw = render_volume(other, spec)
    assert c_raw != a_raw and not np.array_equal(c_lab, a_lab)


def test_serial_build_matches_ray_build_byte_for_byte(tiny_db, tmp_path):
    serial = str(tmp_path / "serial")
    index = build_phantom_db(serial, TINY, use_ray=False)
    ray_index = load_index(tiny_db)
    assert [s.file for s in index.shards] == [s.file for s in ray_index.shards]
    for a, b in zip(shard_uris(serial, index.shards), shard_uris(tiny_db, ray_index.shards)):
        assert hashlib.sha256(open(a, "rb").read()).digest() == hashlib.sha256(open(b, "rb").read()).digest(), a


def test_rebuild_same_config_is_noop_and_new_config_is_next_version(tmp_path):
    small = TINY.with_overrides({"pool_modalities": ["T2 MRI"], "slices_per_volume": 8})
    uri = str(tmp_path / "db")
    first = build_phantom_db(uri, small, use_ray=False)
    again = build_phantom_db(uri, small, use_ray=False)
    assert again.version == first.version == 1 and again.rows == first.rows
    changed = build_phantom_db(uri, small.with_overrides({"seed": 5}), use_ray=False)
    assert changed.version == 2
    assert load_index(uri).version == 2
    assert all(s.file.startswith("v2/") for s in load_index(uri).shards)


def test_every_shard_is_valid_and_index_counts_match(tiny_db):
    index = load_index(tiny_db)
    assert index.meta["source_modality"] == SOURCE_MODALITY and index.meta["target_modality"] == TARGET_MODALITY
    totals = {c: collections.Counter() for c in INDEX_COLUMNS}
    rows = 0
    for shard, uri in zip(index.shards, shard_uris(tiny_db, index.shards)):
        table = pq.read_table(uri)
        validate_slice_table(table, where=uri)
        assert table.num_rows == shard.rows
        assert len(set(table.column("dataset").to_pylist())) == 1  # shards never mix datasets
        rows += table.num_rows
        for c in INDEX_COLUMNS:
            totals[c].update("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                             for v in table.column(c).to_pylist())
    assert rows == index.rows
    assert index.counts() == {c: dict(sorted(v.items())) for c, v in totals.items()}
    n = TINY.slices_per_volume * TINY.volumes
    assert index.counts()["dataset"] == {"phantom-pool": n * len(TINY.pool_modalities), "phantom-src": n,
                                         "phantom-tgt": n}


def test_source_has_masks_target_train_has_none_target_test_has_them(tables):
    src, tgt, pool = tables["phantom-src"], tables["phantom-tgt"], tables["phantom-pool"]
    assert set(src.column("modality").to_pylist()) == {SOURCE_MODALITY}
    assert set(tgt.column("modality").to_pylist()) == {TARGET_MODALITY}
    assert all(src.column("has_mask").to_pylist())
    assert set(src.column("split").to_pylist()) == {"train", "test"}
    for row in tgt.to_pylist():
        assert row["has_mask"] == (row["split"] == "test"), row["slice_id"]
        if not row["has_mask"]:
            assert row["mask"] is None and row["organs"] == []
    assert not any(pool.column("has_mask").to_pylist())
    assert set(pool.column("modality").to_pylist()) == set(TINY.pool_modalities)
    assert SOURCE_MODALITY not in TINY.pool_modalities and TARGET_MODALITY not in TINY.pool_modalities


def test_organs_are_3d_with_changing_cross_sections_and_small_ends(tables):
    seen, end_fractions = set(), []
    for vid, rows in _volumes(tables["phantom-src"]).items():
        masks = _masks(rows)
        for organ_id, name in ORGAN_IDS.items():
            areas = (masks == organ_id).sum(axis=(1, 2))
            present = np.nonzero(areas)[0]
            if present.size == 0:
                continue
            seen.add(name)
            assert np.all(np.diff(present) == 1), f"{vid} {name}: not one contiguous run of slices {present}"
            for k, row in zip(range(len(rows)), rows):
                assert (name in row["organs"]) == bool(areas[k]), (row["slice_id"], name)
            if present.size >= 3:
                assert len(set(areas[present].tolist())) > 1, (vid, name, areas)
            if present.size >= 4:
                ends = areas[present[0]], areas[present[-1]]
                assert max(ends) < areas.max(), (vid, name, areas)
                end_fractions.extend(e / areas.max() for e in ends)
        liver = (masks == 1).sum(axis=(1, 2))
        assert (liver > 0).sum() >= 5 and liver.max() > 0.05 * masks[0].size, vid
        assert liver[np.nonzero(liver)[0][0]] < 0.35 * liver.max(), (vid, liver)  # the liver's tip is small
    assert seen == set(ORGAN_IDS.values())
    assert np.median(end_fractions) < 0.5 and min(end_fractions) < 0.15, end_fractions  # organs end in small masks
    # bodies differ between volumes
    livers = [(_masks(rows) == 1).sum() for rows in _volumes(tables["phantom-src"]).values()]
    assert len(set(livers)) == len(livers)


def test_regions_follow_height_and_prompts_follow_template(tables):
    for name, table in tables.items():
        for vid, rows in _volumes(table).items():
            regions = [r["region"] for r in rows]
            assert set(regions) <= set(REGIONS)
            order = [REGION_ORDER.index(r) for r in regions]
            assert order == sorted(order), (name, vid, regions)
            assert regions[0] == "pelvic region" and regions[-1] in ("upper abdominal region", "lower thoracic region")
            for r in rows:
                assert r["modality_attributes"] == attributes_for(r["modality"])
                assert r["prompt"] == build_prompt(r["modality"], r["modality_attributes"], r["region"], r["organs"])
                assert decode_organ_map(r["organ_map"]) == ORGAN_IDS
                assert r["source_file"] == f"phantom://{name}/{vid}"
                assert r["pixel_spacing"] == pytest.approx([TINY.fov_mm / TINY.resolution] * 2)
            assert len({r["source_sha256"] for r in rows}) == 1


def test_images_are_preprocessed_and_noisy(tables):
    for name, table in tables.items():
        for vid, rows in _volumes(table).items():
            images = _images(rows)
            assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
            assert images.min() == 0 and images.max() == 1, (name, vid)
            background = images[:, :3, :3]
            assert background.std() > 0  # Rician noise in the air


def test_source_and_target_contrasts_differ(tables):
    """Organ intensity order flips between T1 in-phase and T2 SPIR, as in real abdominal MR."""
    def organ_means(rows):
        images, masks = _images(rows), _masks(rows)
        return {organ: float(images[masks == organ].mean()) for organ in (1, 2, 3)}

    src_test = [r for rows in _volumes(tables["phantom-src"]).values() for r in rows]
    tgt_test = [r for rows in _volumes(tables["phantom-tgt"]).values() for r in rows if r["has_mask"]]
    src, tgt = organ_means(src_test), organ_means(tgt_test)
    assert src[1] > src[2] + 0.05, src  # T1: liver brighter than spleen
    assert tgt[2] > tgt[1] + 0.1, tgt  # T2 SPIR: spleen brighter than liver
    assert src[1] > src[3] and tgt[3] > tgt[1]  # kidney flips too
