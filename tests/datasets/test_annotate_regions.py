"""annotate-regions with a tiny open_clip model written here: actor pool, thresholds, atomic new version."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mrgen.datasets import annotate_regions as ar
from mrgen.datasets.prompt import build_prompt
from mrgen.datasets.schema import REGIONS, arrow_schema, decode_image, encode_image, encode_organ_map
from mrgen.datasets.store import ShardWriter, load_index, read_table

SIZE = 16


def make_db(uri: str) -> None:
    """Two volumes (one with organs), one shard each, region unknown."""
    writer = ShardWriter(uri, version=1, meta={"resolution": SIZE})
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for v, (modality, attributes, organs) in enumerate([("T1", "fat high signal", ["liver"]), ("T2 SPIR", "", [])]):
        rows = []
        for i in range(3):
            image = ((np.sin(3 * (v + 1) * xx + i) * np.cos(2 * yy * (i + 1)) + 1) / 2).astype(np.float32)
            rows.append({"slice_id": f"t/v{v}/{i:04d}", "dataset": "t", "volume_id": f"v{v}", "slice_index": i,
                         "split": "train", "modality": modality, "modality_attributes": attributes, "region": None,
                         "organs": organs, "prompt": build_prompt(modality, attributes or None, None, organs),
                         "height": SIZE, "width": SIZE, "image": encode_image(image), "has_mask": False, "mask": None,
                         "organ_map": encode_organ_map({1: "liver"} if organs else {}), "pixel_spacing": [1.0, 1.0],
                         "source_file": "x", "source_sha256": "0" * 64})
        writer.write(pa.Table.from_pylist(rows, schema=arrow_schema()), [f"t/v{v}"])
    writer.commit()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def write_tiny_clip(folder: str | Path, seed: int = 0, logit_scale: float = 1.0) -> str:
    """A tiny random open_clip model folder (ViT + text transformer, built-in tokenizer) for CPU tests.

    Returns its ``local-dir:`` name. Real runs use BiomedCLIP from a local open_clip folder instead.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(logit_scale)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip", logit_scale=1.0)


def test_region_prompts_follow_appendix_b1():
    prompts = ar.region_prompts()
    assert len(prompts) == 6
    assert prompts[3] == ("This is a radiology image that shows Upper Abdominal Region of a human body, "
                          "and probably contains liver, spleen, pancreas, kidney and stomach.")


def test_model_names_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ar.RegionModelError, match="HF_HUB_OFFLINE=1"):
        ar.check_model_name("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(ar.RegionModelError, match="open_clip_config.json"):
        ar.check_model_name(f"local-dir:{tmp_path}")
    with pytest.raises(ar.RegionModelError, match="no region model"):
        ar.check_model_name(None)


def test_threshold_zero_labels_all_and_publishes_a_new_version_atomically(tmp_path, model, ray_session, monkeypatch):
    uri = str(tmp_path / "db")
    make_db(uri)
    v1_before = digests(Path(uri) / "v1")
    old_prompts = read_table(uri, columns=["slice_id", "prompt"]).to_pylist()
    seen_at_commit = {}
    real_commit = ShardWriter.commit

    def observing_commit(self):
        # every new shard is written, the index is not yet replaced: readers still get version 1 in full
        seen_at_commit["version"] = load_index(uri).version
        seen_at_commit["rows"] = read_table(uri, columns=["region", "prompt"]).to_pylist()
        seen_at_commit["v2_files"] = sorted(p.name for p in (Path(uri) / "v2").glob("*.parquet"))
        return real_commit(self)

    monkeypatch.setattr(ShardWriter, "commit", observing_commit)
    report = ar.annotate_regions(uri, model, threshold=0.0, actors=1, batch_size=4)
    assert seen_at_commit["version"] == 1 and len(seen_at_commit["v2_files"]) == 2
    assert all(r["region"] is None for r in seen_at_commit["rows"])
    assert {r["prompt"] for r in seen_at_commit["rows"]} == {r["prompt"] for r in old_prompts}

    index = load_index(uri)
    assert index.version == 2 and report.version == 2 and all(s.file.startswith("v2/") for s in index.shards)
    assert digests(Path(uri) / "v1") == v1_before  # the old version is untouched
    table = read_table(uri).to_pylist()
    assert report.slices == report.labeled == len(table) == 6
    assert all(r["region"] in REGIONS for r in table)
    for row in table:
        attributes = row["modality_attributes"] or None
        assert row["prompt"] == build_prompt(row["modality"], attributes, row["region"], row["organs"])
        assert f"; {row['region']}" in row["prompt"]
    assert index.meta["regions"]["labeled"] == 6 and index.meta["resolution"] == SIZE

    # the actors' labels are the argmax of the model's own zero-shot probabilities
    classifier = ar.RegionClassifier(model, threshold=0.0)
    images = np.stack([decode_image(r["image"], SIZE, SIZE) for r in table])
    expected = classifier.probabilities(images).argmax(axis=1)
    assert [r["region"] for r in table] == [REGIONS[i] for i in expected]


def test_threshold_one_leaves_every_slice_unlabeled(tmp_path, model, ray_session):
    uri = str(tmp_path / "db")
    make_db(uri)
    report = ar.annotate_regions(uri, model, threshold=1.0, actors=1, batch_size=4)
    table = read_table(uri).to_pylist()
    assert report.labeled == 0 and load_index(uri).version == 2
    assert all(r["region"] is None for r in table)
    assert all("region" not in r["prompt"] for r in table)
    assert load_index(uri).counts()["region"] == {"null": 6}
