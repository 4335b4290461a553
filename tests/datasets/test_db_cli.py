"""`mrgen db phantom|info|show` and `mrgen demo --quick` through the real entry point."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mrgen.cli.main import build_parser, main
from mrgen.datasets.store import load_index


def test_db_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["db", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("phantom", "info", "show"):
        assert name in out


def test_phantom_command_builds_with_flags(tmp_path, capsys):
    out = str(tmp_path / "db")
    code = main(["db", "phantom", "--out", out, "--config", "tiny", "--volumes", "2", "--seed", "3",
                 "--set", "slices_per_volume=6", "--set", "pool_modalities=[T2 MRI]"])
    assert code == 0
    index = load_index(out)
    assert index.meta["phantom"]["seed"] == 3 and index.meta["phantom"]["volumes"] == 2
    assert index.rows == 6 * 2 * 3
    printed = capsys.readouterr().out
    assert f"{index.rows} slices" in printed and "phantom-pool" in printed


def test_phantom_command_rejects_bad_value_naming_key(tmp_path, capsys):
    assert main(["db", "phantom", "--out", str(tmp_path / "x"), "--config", "tiny", "--set", "noise=-1"]) == 1
    assert "noise" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "index.json")


def test_info_prints_counts(tiny_db, capsys):
    assert main(["db", "info", tiny_db]) == 0
    out = capsys.readouterr().out
    index = load_index(tiny_db)
    assert f"version {index.version}: {index.rows} slices" in out
    for column in ("dataset", "modality", "region", "has_mask", "split"):
        assert f"  {column}:" in out
    lines = [line.strip().rsplit(None, 1) for line in out.splitlines()]
    for column in ("dataset", "modality", "region", "split"):
        for value, count in index.counts()[column].items():
            assert [value, str(count)] in lines, (column, value, count)


def test_info_on_missing_db_fails_clearly(tmp_path, capsys):
    assert main(["db", "info", str(tmp_path / "nothing")]) == 2
    assert "not an MRGen-DB" in capsys.readouterr().err


def test_show_draws_sheet_with_overlays(tiny_db, tmp_path, capsys):
    png = tmp_path / "sheet.png"
    assert main(["db", "show", tiny_db, "--out", str(png), "--n", "6", "--has-mask", "--dataset", "phantom-src"]) == 0
    assert "6 slices" in capsys.readouterr().out
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[0] > 192 and img.shape[1] > 3 * 192
    tinted = np.abs(img[..., 0] - img[..., 1]) + np.abs(img[..., 1] - img[..., 2])
    assert (tinted > 60).sum() > 50  # coloured organ overlays, not just grey slices
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temporary files left behind
    assert main(["db", "show", tiny_db, "--out", str(tmp_path / "none.png"), "--dataset", "nope"]) == 1


def test_demo_db_step_builds_db_and_sheet(tmp_path, ray_session, capsys):
    """The demo's first step alone; tests/segment/test_experiment_quick.py runs every step."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--db-only"]) == 0
    printed = capsys.readouterr().out
    assert "phantom-src" in printed and (out / "db_sheet.png").exists()
    assert load_index(str(out / "db")).rows > 0
    assert "demo" in build_parser().format_help()
