"""Prediction with a trained nnU-Net model folder, and slices stacked back into volumes.

:class:`VolumePredictor` builds ``nnUNetPredictor`` once from the folder and predicts a volume of 2-D slices
``(Z, H, W)`` with ``predict_single_npy_array`` on ``(1, Z, H, W)``. In the 2d configuration the network sees one
slice at a time either way, but the intensity normalisation does not: z-score and rescale normalisations use
the statistics of the array they are given, and at training time that array was one slice (each PNG is a case).
With those schemes every slice is therefore predicted as its own ``(1, 1, H, W)`` case, exactly as it was seen in
training; with slice-independent schemes (``rgb_to_0_1``, ``nonorm``, ``ct``) the whole stack goes at once.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
# nnU-Net and torch where they are used, after nnunet_env.prepare_process set the environment they read

PER_IMAGE_NORMALIZATIONS = {"ZScoreNormalization", "RescaleTo01Normalization"}
PNG_SPACING = {"spacing": (999, 1, 1)}  # what nnU-Net's NaturalImage2DIO reports for every PNG


class VolumePredictor:
    """An nnU-Net model folder (``plans.json``, ``dataset.json``, ``fold_<f>/checkpoint_final.pth``), loaded once."""

    def __init__(self, model_dir: str | Path, fold: str | int = "all", device: str = "cpu", mirroring: bool = False,
                 checkpoint: str = "checkpoint_final.pth"):
        # torch and nnU-Net load in the task, after nnunet_env.prepare_process set the environment they read
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        model_dir = Path(model_dir)
        missing = [p for p in ("plans.json", "dataset.json", f"fold_{fold}/{checkpoint}")
                   if not (model_dir / p).exists()]
        if missing:
            raise FileNotFoundError(f"{model_dir}: not an nnU-Net model folder (missing {', '.join(missing)})")
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                         perform_everything_on_device=device == "cuda", device=torch.device(device),
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(model_dir), (fold,), checkpoint_name=checkpoint)
        self.dataset_json = json.loads((model_dir / "dataset.json").read_text())
        schemes = set(self.predictor.configuration_manager.normalization_schemes)
        self.per_slice = bool(schemes & PER_IMAGE_NORMALIZATIONS)

    @property
    def labels(self) -> dict[int, str]:
        """Label id → organ name, background excluded."""
        return {int(i): name for name, i in self.dataset_json["labels"].items() if int(i) != 0}

    def predict(self, volume: np.ndarray) -> np.ndarray:
        """Label ids ``(Z, H, W)`` uint8 for a volume of slices ``(Z, H, W)`` with the training PNGs' values."""
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"expected a (Z, H, W) volume, got shape {volume.shape}")
        if self.per_slice:
            slices = [self._predict(volume[z:z + 1]) for z in range(volume.shape[0])]
            return np.concatenate(slices).astype(np.uint8)
        return self._predict(volume).astype(np.uint8)

    def _predict(self, stack: np.ndarray) -> np.ndarray:
        out = self.predictor.predict_single_npy_array(stack[None], dict(PNG_SPACING))
        return np.asarray(out).reshape(stack.shape)


def read_png(path: Path) -> np.ndarray:
    """A PNG as nnU-Net's NaturalImage2DIO reads it (same values, float32 ``(H, W)``)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    image, _ = NaturalImage2DIO().read_images([str(path)])
    return image[0, 0]


def stacked_volumes(dataset_folder: str | Path, groups: dict[str, list[tuple[int, str]]]
                    ) -> Iterator[tuple[str, list[int], np.ndarray, np.ndarray]]:
    """``(volume, slice indices, image (Z,H,W), reference (Z,H,W))`` per volume of an exported test set.

    ``groups`` maps a volume to its ``(slice_index, case)`` pairs (``export.nnunet.volume_groups``); slices are
    stacked in slice-index order whatever order the pairs come in. A volume whose indices repeat is an error.
    """
    folder = Path(dataset_folder)
    for volume, pairs in groups.items():
        pairs = sorted(pairs)
        indices = [i for i, _ in pairs]
        if len(set(indices)) != len(indices):
            raise ValueError(f"volume {volume}: slice indices repeat ({indices})")
        images = np.stack([read_png(folder / "imagesTs" / f"{case}_0000.png") for _, case in pairs])
        refs = np.stack([read_png(folder / "labelsTs" / f"{case}.png") for _, case in pairs]).astype(np.uint8)
        yield volume, indices, images, refs
