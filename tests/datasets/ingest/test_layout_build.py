"""`mrgen db build DIR` on Ray: a CHAOS folder with bad studies (exit code, build report naming case and file,
--split-by), then the round trip: `mrgen export nnunet` of a subset, built back, gives the same slices and masks."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mrgen.cli.db_build import EXIT_OK, EXIT_SKIPPED, add_build_parser
from mrgen.datasets.ingest.build import REPORT_FILE
from mrgen.datasets.schema import decode_image, decode_mask, decode_organ_map
from mrgen.datasets.store import read_table
from mrgen.jobs.export.nnunet import export_nnunet

from tests.datasets.ingest.layout_data import write_chaos


def build(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mrgen db")
    add_build_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build", *argv, "--resolution", "16"])
    return args.func(args)


def organ_names(row: dict) -> np.ndarray:
    names = np.array(["", *[""] * 255], dtype=object)
    for organ_id, name in decode_organ_map(row["organ_map"]).items():
        names[organ_id] = name
    return names[decode_mask(row["mask"], row["height"], row["width"])]


def test_chaos_folder_report_splits_and_nnunet_round_trip(tmp_path, ray_session):
    chaos, db = write_chaos(tmp_path / "CHAOS"), tmp_path / "db"
    assert build(str(chaos), "--out", str(db), "--split-by", "1:0.25") == EXIT_SKIPPED
    report = json.loads((db / REPORT_FILE).read_text())
    assert report["layout"] == "chaos"
    assert sorted((s["file"].split("MR/")[1], s["volume"], s["reason"][:40]) for s in report["skipped"]) == [
        ("3/T1DUAL/DICOM_anon/InPhase", "chaos-mri/3_T1DUAL_InPhase", "series InPhase: gap of 12.00 mm between "),
        ("3/T1DUAL/Ground", None, "case 3: T1DUAL/Ground/ holds 4 PNG masks"),
        ("3/T2SPIR/Ground", None, "case 3: T2SPIR/Ground/ holds 4 PNG masks")]
    assert sorted(report["volumes"]) == sorted(f"chaos-mri/{case}_{series}" for case in "1245"
                                               for series in ("T1DUAL_InPhase", "T1DUAL_OutPhase", "T2SPIR"))
    table = read_table(str(db), ["volume_id", "split", "has_mask", "source_spacing"])
    splits = {v.split("_")[0]: s for v, s in zip(table.column("volume_id").to_pylist(),
                                                  table.column("split").to_pylist())}
    assert splits == {"1": "test", "2": "train", "4": "test", "5": "train"}  # 4 by CHAOS, 1 by --split-by 1:0.25

    subset = export_nnunet(str(tmp_path / "raw"), 12, "RoundTrip", real=str(db), real_modalities=["T1 in-phase"])
    assert subset["test_cases"] == 5  # study 1's masked InPhase slices (study 4 has no ground truth)
    back = tmp_path / "back"
    assert build(subset["folder"], "--out", str(back), "--modality", "T1 in-phase") == EXIT_OK
    cases = json.loads((Path(subset["folder"]) / "cases.json").read_text())
    original = {r["slice_id"]: r for r in read_table(str(db), split="test", modality="T1 in-phase",
                                                     has_mask=True).to_pylist()}
    rows = read_table(str(back)).to_pylist()
    assert len(rows) == len(original) == 5
    for row in rows:
        source = original[cases[row["volume_id"]]["slice_id"]]
        assert (row["split"], row["modality"], row["organs"]) == ("test", "T1 in-phase", source["organs"])
        np.testing.assert_allclose(decode_image(row["image"], 16, 16), decode_image(source["image"], 16, 16),
                                   atol=0.5 / 255 + 1e-6)  # 8-bit PNG
        assert (organ_names(row) == organ_names(source)).all()
