"""CLIP-I and CLIP-T (paper Table 4) with a BiomedCLIP-compatible open_clip model loaded from a local folder.

``model``: ``local-dir:/path`` (or a plain folder path) holding ``open_clip_config.json`` + weights, e.g. a
downloaded ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (its HF text tower also needs its
tokenizer files in the folder). Nothing is downloaded.

* CLIP-I: cosine similarity of image embeddings. A synthetic image is paired with the real slice named by its
  ``source_slice_id`` when the real DB holds it (generation from a held-out slice's own conditions);
  otherwise with the centroid of the real images' embeddings (distribution-level similarity). The report
  says which pairing was used.
* CLIP-T: cosine similarity between each synthetic image and its text: the ``prompt`` (default) or the
  ``modality`` label.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from mrgen.jobs.evaluate.fid import load_images


class ClipScorer:
    def __init__(self, model: str, device: str = "cpu"):
        name = model if model.startswith(("local-dir:", "hf-hub:")) else f"local-dir:{Path(model).absolute()}"
        if name.startswith("local-dir:") and not Path(name[len("local-dir:"):]).is_dir():
            raise FileNotFoundError(f"CLIP model folder {name[len('local-dir:'):]} does not exist")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(name, device=device)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model.eval()
        self.size = self.model.visual.image_size
        self.size = self.size[0] if isinstance(self.size, (tuple, list)) else int(self.size)
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        self.id = name

    def images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], np.float32))[:, None]
                x = F.interpolate(x.clamp(0, 1), size=(self.size, self.size), mode="bicubic", align_corners=False)
                x = (x.clamp(0, 1).repeat(1, 3, 1, 1) - self.mean) / self.std
                out.append(F.normalize(self.model.encode_image(x), dim=-1).numpy())
        return np.concatenate(out)

    def texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                out.append(F.normalize(self.model.encode_text(self.tokenizer(texts[start:start + batch_size])),
                                       dim=-1).numpy())
        return np.concatenate(out)


def compute_clip_scores(model: str, synthetic: str, real: str | None = None, text: str = "prompt",
                        real_filters: dict[str, Any] | None = None, synthetic_filters: dict[str, Any] | None = None,
                        limit: int | None = None) -> dict[str, Any]:
    if text not in ("prompt", "modality"):
        raise ValueError(f"text must be 'prompt' or 'modality', got {text!r}")
    scorer = ClipScorer(model)
    syn_rows, syn_images = load_images(synthetic, limit, **(synthetic_filters or {}))
    syn_emb = scorer.images(syn_images)
    text_emb = scorer.texts([str(r[text]) for r in syn_rows])
    report: dict[str, Any] = {"clip_t": float(np.mean(np.sum(syn_emb * text_emb, axis=1))), "text": text,
                              "n_synthetic": len(syn_rows), "model": scorer.id}
    if real is not None:
        real_rows, real_images = load_images(real, limit, **(real_filters or {}))
        real_emb = scorer.images(real_images)
        by_id = {r["slice_id"]: k for k, r in enumerate(real_rows)}
        pairs = [(i, by_id[r["source_slice_id"]]) for i, r in enumerate(syn_rows) if r.get("source_slice_id") in by_id]
        if pairs:
            sims = [float(syn_emb[i] @ real_emb[j]) for i, j in pairs]
            report.update(clip_i=float(np.mean(sims)), clip_i_pairing="source_slice_id", n_pairs=len(pairs))
        else:
            centroid = real_emb.mean(axis=0)
            centroid /= max(np.linalg.norm(centroid), 1e-12)
            report.update(clip_i=float(np.mean(syn_emb @ centroid)), clip_i_pairing="real centroid")
        report["n_real"] = len(real_rows)
    return report
