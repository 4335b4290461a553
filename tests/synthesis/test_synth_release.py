"""The official release end to end, nothing renamed: its data list → `mrgen db build` (its preprocessing, the usual
bad-input report) → `mrgen synthesize --rule official --filter sam2 --sam2-config 2.0-tiny` with its checkpoint
folder (untrained SAM2.0 at 256: scores mean nothing, so only the mechanics are checked here; the rule itself is
tested against hand-worked tables in test_synth_selection.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrgen.cli.main import main
from mrgen.datasets.schema import decode_mask, decode_organ_map
from mrgen.datasets.store import read_table

TARGET = "T1 in-phase Abdomen MRI"
ATTRIBUTES = {"T2 SPIR Abdomen MRI": "fat low signal, water high signal", TARGET: "fat high signal, water low signal"}
LABELS = ["liver", "spleen"]


def _write_list(root: Path) -> Path:
    """Three good slices (40x30, two organs each) and three bad rows, as the release's conditional_dataset JSON."""
    rows = []
    for i in range(3):
        image = np.full((30, 40), 20, np.uint8)
        image[5:20, 6:22] = 120 + 20 * i
        image[12:26, 24:36] = 200
        liver = np.zeros((30, 40), np.uint8)
        liver[5:20, 6:22] = 255
        spleen = np.zeros((30, 40), np.uint8)
        spleen[12:26, 24:36] = 255
        for name, array in ((f"s{i}.png", image), (f"s{i}_liver.png", liver), (f"s{i}_spleen.png", spleen)):
            Image.fromarray(array).save(root / name)
        rows.append({"image_path": f"s{i}.png", "mask0_path": f"s{i}_liver.png", "mask1_path": f"s{i}_spleen.png",
                     "mask2_path": "", "mask3_path": "", "modality": "T2 SPIR Abdomen MRI",
                     "modality_attributes": ATTRIBUTES["T2 SPIR Abdomen MRI"], "region": "upper abdominal region",
                     "label": LABELS, "organs": LABELS})
    rows.append({"mask0_path": "s0_liver.png", "modality": "T2 SPIR Abdomen MRI", "label": LABELS})    # row 4
    rows.append({**rows[0], "image_path": "s1.png", "volume_id": "belly", "region": "belly"})           # row 5
    rows.append({**rows[0], "volume_id": "lost", "mask1_path": "nowhere.png"})                          # row 6
    path = root / "CHAOS_MRI_T2_SPIR_train.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


@pytest.fixture(scope="module")
def release_db(tmp_path_factory, ray_session) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("release-list")
    path = _write_list(root)
    out = str(root / "db")
    assert main(["db", "build", str(path), "--out", out, "--resolution", "32"]) == 3  # some inputs skipped
    return out, path


def test_data_list_builds_with_the_release_preprocessing(release_db):
    from mrgen.datasets.ingest.release_list import release_preprocess

    out, path = release_db
    report = json.loads((Path(out) / "build_report.json").read_text())
    reasons = {(s["row"], s["reason"].split(":")[0]) for s in report["skipped"]}
    assert reasons == {(4, "missing field 'image_path'"), (5, "field 'region'"), (6, "file not found")}
    lost = next(s for s in report["skipped"] if s["row"] == 6)
    assert lost["file"].endswith("nowhere.png")
    table = read_table(out).sort_by("slice_id")
    assert table["slice_id"].to_pylist() == [f"CHAOS_MRI_T2_SPIR/s{i}/0000" for i in range(3)]
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["dataset"], row["split"], row["region"], row["modality"]) == (
        "CHAOS_MRI_T2_SPIR", "train", "upper abdominal region", "T2 SPIR Abdomen MRI")
    assert row["modality_attributes"] == ATTRIBUTES["T2 SPIR Abdomen MRI"] and row["organs"] == LABELS
    assert decode_organ_map(row["organ_map"]) == {1: "liver", 2: "spleen"}
    image = np.frombuffer(row["image"], "<f4").reshape(32, 32)
    assert np.allclose(image, release_preprocess(np.asarray(Image.open(path.parent / "s0.png")), 32), atol=1e-6)
    mask = decode_mask(row["mask"], 32, 32)
    assert set(np.unique(mask)) == {0, 1, 2} and (mask[:4] == 0).all()  # 40x30 padded by 5 rows above and below


def test_release_preprocessing_hand_worked():
    from mrgen.datasets.ingest.release_list import read_release_list, release_preprocess

    pixels = np.array([[0, 50, 100, 200], [200, 100, 50, 0]], np.uint8)  # 2x4: one zero row above, one below
    out = release_preprocess(pixels, 4)  # no resizing at 4x4
    scale = 200 + 1e-6
    expected = np.zeros((4, 4), np.float32)
    expected[1:3] = pixels / scale
    assert np.allclose(out, expected, atol=1e-6)
    tall = release_preprocess(np.array([[10], [20], [30]], np.uint8), 3)  # 3x1: one zero column left, one right
    assert np.allclose(tall[:, 1], [0.0, 0.5, 1.0], atol=1e-5) and not tall[:, [0, 2]].any()
    assert read_release_list  # the list reader is exercised through `mrgen db build` above


def test_synthesize_runs_the_release_folder_with_the_official_rule(release_db, release_folder, tmp_path):
    db, _ = release_db
    attributes = tmp_path / "modality_attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    out = tmp_path / "synthetic"
    code = main(["synthesize", "--model", release_folder, "--source", db, "--out", str(out), "--target-modality",
                 TARGET, "--attributes", str(attributes), "--organ-weights", '{"liver": 0.3, "spleen": 0.6}',
                 "--rule", "official", "--filter", "sam2", "--sam2-config", "2.0-tiny", "--sam2-random",
                 "--sam2-image-size", "256", "--sam2-multimask", "--candidates", "3", "--keep", "2", "--steps", "2",
                 "--config", "tiny", "--set", "thresholds.organ_iou=0", "--set", "thresholds.organ_conf=0",
                 "--set", "thresholds.mean_iou=0", "--set", "thresholds.mean_conf=0"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["masks"] == 3 and report["totals"]["masks_skipped"] == 0
    assert report["totals"]["candidates_generated"] == 9
    assert "sam2_hiera_t.yaml@256" in report["filter_model"] and "mask+multimask" in report["filter_model"]
    run = json.loads((out / "run.json").read_text())
    assert run["rule"] == "official" and run["organ_weights"] == {"liver": 0.3, "spleen": 0.6}
    table = read_table(str(out))
    prompts = set(table["prompt"].to_pylist()) if table.num_rows else set()
    expected = f"{TARGET}, {ATTRIBUTES[TARGET]}, upper abdominal region, liver, spleen"
    assert prompts <= {expected}  # the release's template, the dataset's label list
    from mrgen.jobs.synthesis.stages.writer import read_audit

    fates = set(read_audit(str(out))["fate"].to_pylist())
    assert fates <= {"kept", "kept_relaxed", "passed_not_kept", "rejected", "not_ranked"}
