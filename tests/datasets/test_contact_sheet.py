"""Contact sheets: overlay colours per organ, captions, borders, atomic writes, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mrgen.datasets.contact_sheet import PALETTE, contact_sheet, organ_colour, overlay


def _item(organ_id=1, caption="T1 MRI; liver", border=None):
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = organ_id
    return {"image": image, "mask": mask, "caption": caption, "border": border}


def test_overlay_tints_each_organ_in_its_colour():
    item = _item(organ_id=2)
    rgb = overlay(item["image"], item["mask"])
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[0, 0] == rgb[0, 0, 0])  # background stays grey
    tint = rgb[12, 12].astype(int) - int(round(item["image"][12, 12] * 255))
    assert np.argmax(tint) == np.argmax(PALETTE[1])
    assert len({organ_colour(i) for i in range(1, 12)}) == 11
    with pytest.raises(ValueError, match="shape"):
        overlay(item["image"], np.zeros((4, 4), np.uint8))


def test_outline_draws_only_the_boundary_opaque():
    item = _item(organ_id=1)
    rgb = overlay(item["image"], item["mask"], outline=True)
    grey = np.round(item["image"] * 255).astype(int)
    assert tuple(rgb[8, 12]) == PALETTE[0] and tuple(rgb[15, 15]) == PALETTE[0]  # edge pixels: the organ's colour
    assert np.all(rgb[12, 12] == grey[12, 12]) and np.all(rgb[7, 12] == grey[7, 12])  # inside and outside: the image
    assert (np.all(rgb == np.array(PALETTE[0]), axis=-1)).sum() == 8 * 8 - 6 * 6


def test_sheet_layout_caption_border_and_atomic_save(tmp_path):
    items = [_item(1, "a long caption " * 20), _item(3), {"image": np.zeros((32, 32)), "caption": "no mask"},
             _item(5, border="lime")]
    out = tmp_path / "sub" / "sheet.png"
    sheet = contact_sheet(items, str(out), columns=2, cell=64, title="four slices")
    saved = Image.open(out)
    assert saved.size == sheet.size and saved.size[0] == 2 * (64 + 6) + 6
    pixels = np.asarray(saved.convert("RGB"))
    assert (np.all(pixels == (0, 255, 0), axis=-1)).sum() > 50  # the lime border of the kept item
    assert sorted(p.name for p in out.parent.iterdir()) == ["sheet.png"]


def test_sheet_rejects_bad_items():
    with pytest.raises(ValueError, match="no items"):
        contact_sheet([], None)
    with pytest.raises(ValueError, match="item 1"):
        contact_sheet([_item(), {"caption": "x"}], None)
