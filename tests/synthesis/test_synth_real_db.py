"""Synthesis from a DB built by `mrgen db build` (NIfTI volumes and label maps, no region annotation) with a bundle
that conditions on organ names: every nullable column survives, organs are mapped by name whatever their ids,
an organ outside the vocabulary is skipped with its reason."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest.build import build_db
from mrgen.datasets.schema import decode_image
from mrgen.datasets.store import read_table
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import SynthesisInputError, run_synthesis
from mrgen.jobs.synthesis.stages.writer import read_audit
from mrgen.models.condition import MaskCondition

# a collection whose ids differ from the phantom's (spleen 1, liver 2) and that holds an organ the bundle never saw
LABELS = {"1": "spleen", "2": "liver", "7": "heart"}


def _volume(tmp_path, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    image = rng.random((64, 64, 4)).astype(np.float32)
    labels = np.zeros((64, 64, 4), np.uint8)
    labels[10:30, 10:40, :] = 2            # liver on every slice
    labels[36:54, 40:58, 1:] = 1           # spleen on three
    labels[40:60, 5:20, 3] = 7             # heart on the last one
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / f"img{seed}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / f"seg{seed}.nii.gz"))
    return f"img{seed}.nii.gz", f"seg{seed}.nii.gz"


@pytest.fixture(scope="module")
def real_db(tmp_path_factory, ray_session) -> str:
    folder = tmp_path_factory.mktemp("collection")
    rows = []
    for seed in range(2):
        image, label = _volume(folder, seed)
        rows.append({"image": image, "label": label, "labels": LABELS, "dataset": "clinic", "modality": "T1 MRI"})
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = str(folder / "db")
    build_db(folder / "manifest.jsonl", out, DBConfig.load(None, ["resolution=64"]))
    assert set(read_table(out, ["region"]).column("region").to_pylist()) == {None}  # no region annotation
    return out


@pytest.fixture(scope="module")
def named_bundle(tmp_path_factory) -> str:
    from mrgen.models.bundle import build_random_bundle

    bundle = build_random_bundle("tiny")
    bundle.manifest.update(MaskCondition.from_organ_names(["liver", "spleen", "right kidney"]).manifest_fields())
    path = str(tmp_path_factory.mktemp("named_bundle") / "bundle")
    bundle.save(path)
    return path


def _config(bundle: str, db: str, out: str) -> SynthesisConfig:
    return SynthesisConfig.load("tiny", [f"model={bundle}", f"source={db}", f"out={out}",
                                         "target_modalities=['T2 SPIR MRI']", "filter=none", "candidates=1", "keep=1",
                                         "steps=2", "min_mask_area=0.01"])


def test_synthesis_from_a_built_db_maps_organs_by_name(real_db, named_bundle, tmp_path):
    from mrgen.models.bundle import ModelBundle
    from mrgen.models.pipeline import MRGenPipeline

    out = str(tmp_path / "synthetic")
    report = run_synthesis(_config(named_bundle, real_db, out))
    audit = read_audit(out).to_pylist()
    skipped = [r for r in audit if r["fate"] == "skipped"]
    assert len(skipped) == 2 and all("['heart'] not in the generator's vocabulary" in r["skip_reason"] for r in skipped)
    rows = read_table(out).to_pylist()
    assert len(rows) == report["rows"] == 6  # 8 slices, the two with a heart skipped
    assert {r["region"] for r in rows} == {None}  # the null column survived synthesis
    assert all("region" not in r["prompt"] for r in rows)
    # the candidate is what the pipeline draws when the collection's ids are mapped through the vocabulary by name
    row = max(rows, key=lambda r: len(r["organs"]))
    mask = np.frombuffer(row["mask"], np.uint8).reshape(64, 64)
    pipe = MRGenPipeline(ModelBundle.load(named_bundle))
    organ_map = {int(k): v for k, v in json.loads(row["organ_map"]).items()}
    expected = pipe.generate([row["prompt"]], mask[None], 1, steps=2, guidance=7.0, sampler="ddim",
                             seeds=[row["seed"]], organ_maps=[organ_map])[0]
    assert np.allclose(decode_image(row["image"], 64, 64), expected, atol=1e-5)
    by_id = pipe.generate([row["prompt"]], mask[None], 1, steps=2, guidance=7.0, sampler="ddim",
                          seeds=[row["seed"]], organ_maps=[{1: "liver", 2: "spleen"}])[0]  # ids read as the phantom's
    assert not np.allclose(expected, by_id, atol=1e-3)


def test_a_bundle_that_fits_nothing_is_refused_naming_both(real_db, tmp_path):
    from mrgen.models.bundle import build_random_bundle

    bundle = build_random_bundle("tiny")
    bundle.manifest.update(MaskCondition.from_organ_names(["bladder", "prostate"]).manifest_fields())
    path = str(tmp_path / "bundle")
    bundle.save(path)
    with pytest.raises(SynthesisInputError, match=r"knows the organs \['bladder', 'prostate'\].*hold \['heart', "
                                                  r"'liver', 'spleen'\]"):
        run_synthesis(_config(path, real_db, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
