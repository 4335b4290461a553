"""`mrgen db build` exit codes: 0 all built, 3 some skipped, 2 usage / config / strict errors."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrgen.cli.db_build import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED
from mrgen.cli.main import main


def run(argv: list[str]) -> int:
    return main(["db", *argv])


@pytest.fixture()
def manifests(tmp_path):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 2)).astype(np.float32), np.eye(4)),
             str(tmp_path / "a.nii.gz"))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"image": "a.nii.gz", "dataset": "cli", "modality": "T2"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.nii.gz", "dataset": "cli", "modality": "T2"}) + "\n"
                   + json.dumps({"image": "a.nii.gz", "dataset": "cli"}) + "\n")
    return good, bad


def test_exit_codes(tmp_path, manifests, ray_session, capsys):
    good, bad = manifests
    assert run(["build", str(good), "--out", str(tmp_path / "db0"), "--resolution", "16"]) == EXIT_OK
    assert run(["build", str(bad), "--out", str(tmp_path / "db3"), "--resolution", "16"]) == EXIT_SKIPPED
    assert "row 2: missing field 'modality'" in capsys.readouterr().err
    assert run(["build", str(bad), "--out", str(tmp_path / "db2"), "--strict", "--resolution", "16"]) == EXIT_ERROR
    assert "bad input (strict)" in capsys.readouterr().err


def test_usage_and_config_errors(tmp_path, manifests, capsys):
    good, _ = manifests
    assert run(["build", str(good), "--out", str(tmp_path / "db"), "--set", "resolution=tiny"]) == EXIT_ERROR
    assert "resolution" in capsys.readouterr().err
    assert run(["build", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "db")]) == EXIT_ERROR
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(["build", str(good)])  # --out missing
    assert exit_info.value.code == 2


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        run(["build", "--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "3  some inputs were skipped" in text
