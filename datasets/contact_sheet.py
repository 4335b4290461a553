"""Contact sheets: a grid of slices with coloured organ overlays and wrapped captions (PIL only).

Reusable by any job that wants to look at slices (DB rows, synthetic candidates, segmentations)::

    contact_sheet([{"image": img, "mask": mask, "caption": prompt, "border": "lime"}, ...], "sheet.png")

Each item: ``image`` float [H, W] in [0, 1]; optional ``mask`` uint8 [H, W] of organ ids (0 = background);
``caption`` text; optional ``border`` colour (a PIL colour name or RGB tuple), e.g. to mark kept samples;
optional ``outline`` (true: draw only each organ's boundary, so the image under the mask stays visible).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from mrgen.datasets.schema import decode_image, decode_mask
from mrgen.platform import storage

# Distinct colours for organ ids 1..10 (liver, spleen, right kidney, left kidney, bladder, prostate, ...).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def organ_colour(organ_id: int) -> tuple[int, int, int]:
    if 1 <= organ_id <= len(PALETTE):
        return PALETTE[organ_id - 1]
    rng = np.random.default_rng(organ_id)  # stable colour for any further id
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45, outline: bool = False) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a grey image with each organ id tinted in its colour (``outline``: only each organ's
    boundary, drawn opaque, so the image inside stays visible)."""
    grey = np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0, 1)
    rgb = np.repeat(grey[..., None] * 255, 3, axis=2)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != grey.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {grey.shape}")
        for organ_id in np.unique(mask):
            if organ_id:
                sel = mask == organ_id
                a = alpha
                if outline:
                    sel, a = sel & ~binary_erosion(sel, border_value=0), 1.0
                rgb[sel] = (1 - a) * rgb[sel] + a * np.array(organ_colour(int(organ_id)), np.float32)
    return rgb.round().astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap by rendered width (long words are split by characters)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = next((i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width), 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def contact_sheet(items: Sequence[Mapping[str, Any]], out_uri: str | None = None, columns: int = 4,
                  cell: int = 192, title: str | None = None, caption_lines: int = 6,
                  font_size: int = 11) -> Image.Image:
    """Draw ``items`` in a grid and (when ``out_uri`` is given) save it atomically as PNG; returns the image."""
    if not items:
        raise ValueError("contact_sheet: no items to draw")
    columns = max(1, min(columns, len(items)))
    rows = -(-len(items) // columns)
    font = _font(font_size)
    line_h = font.getbbox("Ag")[3] + 2
    title_h = line_h + 8 if title else 0
    pad, caption_h = 6, caption_lines * line_h + 4
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, title_h + rows * (cell + caption_h + pad) + pad), "black")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill="white", font=font)
    for n, item in enumerate(items):
        if "image" not in item:
            raise ValueError(f"contact_sheet: item {n} has no 'image'")
        x = pad + (n % columns) * (cell + pad)
        y = title_h + pad + (n // columns) * (cell + caption_h + pad)
        tile = Image.fromarray(overlay(item["image"], item.get("mask"), outline=bool(item.get("outline"))))
        tile = tile.resize((cell, cell), Image.NEAREST)
        sheet.paste(tile, (x, y))
        if item.get("border"):
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=item["border"], width=3)
        lines = _wrap(str(item.get("caption", "")), font, cell)
        if len(lines) > caption_lines:
            lines = lines[:caption_lines - 1] + [lines[caption_lines - 1].rstrip() + " ..."]
        for i, line in enumerate(lines):
            draw.text((x, y + cell + 2 + i * line_h), line, fill=(220, 220, 220), font=font)
    if out_uri is not None:
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        storage.write_bytes(out_uri, buf.getvalue())
    return sheet


def items_from_rows(rows: Sequence[Mapping[str, Any]], caption: str = "prompt") -> list[dict[str, Any]]:
    """Contact-sheet items from MRGen-DB rows (dicts with image/mask bytes, height, width, prompt, slice_id)."""
    items = []
    for row in rows:
        h, w = int(row["height"]), int(row["width"])
        text = str(row.get(caption, ""))
        if row.get("slice_id"):
            text = f"{row['slice_id']}: {text}"
        items.append({"image": decode_image(row["image"], h, w), "mask": decode_mask(row.get("mask"), h, w),
                      "caption": text})
    return items
