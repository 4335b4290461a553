"""The run's contact sheet (drawn by ``datasets.contact_sheet``): one row per sampled mask — the mask, then every
candidate with its mean IoU / confidence and fate; kept ones framed green, relaxed-kept ones orange."""
from __future__ import annotations

import io

import numpy as np

from mrgen.datasets.contact_sheet import contact_sheet

BORDERS = {"kept": (60, 220, 60), "kept_unfiltered": (60, 220, 60), "kept_relaxed": (255, 150, 30)}


def contact_items(previews: list[dict[str, np.ndarray]]) -> tuple[list[dict], int]:
    columns = 1 + max((len(p["images"]) for p in previews), default=0)
    items = []
    for p in previews:
        mask = p["mask"]
        row = [{"image": np.zeros(mask.shape, np.float32), "mask": mask, "caption": f"mask: {p['prompt']}"}]
        indices = p.get("indices", range(len(p["images"])))  # candidate indices (stopped-early ones have no image)
        for k, image in enumerate(p["images"]):
            fate, iou, conf = str(p["fates"][k]), float(p["mean_iou"][k]), float(p["mean_conf"][k])
            scores = "unscored" if np.isnan(iou) else f"IoU {iou:.2f} conf {conf:.2f}"
            row.append({"image": image, "caption": f"#{int(indices[k])} {scores} {fate}",
                        "border": BORDERS.get(fate)})
        row += [{"image": np.zeros(mask.shape, np.float32), "caption": ""}] * (columns - len(row))
        items += row
    return items, columns


def write_contact_sheet(previews: list[dict[str, np.ndarray]], out_uri: str, meaningful: bool) -> None:
    items, columns = contact_items(previews)
    title = "MRGen synthesis: mask, then candidates (green kept, orange kept relaxed)"
    if not meaningful:
        title += " - UNTRAINED/NO FILTER: scores mean nothing"
    contact_sheet(items, out_uri, columns=columns, cell=128, title=title, caption_lines=3)


def load_preview(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}
