"""The mask condition: organ masks → the controller's input intensities, by organ *name*.

A bundle records how it was conditioned in its manifest:

* ``organ_vocabulary`` (``{"liver": 0.5, ...}``, with ``condition_background``): the organs the controller was
  trained on and the intensity each gets. Every DB's or request's ``organ_map`` (id → name) is mapped through it
  by name, so the same organ gets the same intensity whatever id its dataset uses; an organ outside the
  vocabulary is refused (:class:`UnknownOrganError` names it) unless ``condition_default`` gives every other
  organ one value (the official release: weight 1.0).
* no vocabulary (bundles written before it existed): ``mask_encoding`` ``ratio`` / ``linear`` of the raw ids,
  as :func:`mask_to_condition` always did.

Our vocabularies rank the organs (by their smallest id in the training DB, then name) and encode organ ``k``
either as one intensity ``k / (k + 1)`` on a background of 0 (``mask_encoding`` ``vocabulary``: on the phantom
exactly the ``ratio`` encoding of its ids) or as channel ``k`` of a one-hot condition (``onehot``: the
vocabulary maps name → channel, the controller takes one channel per organ). The official MRGen release
conditions on background −1 and organ → 2·w − 1 (per-dataset weights ``w``: :func:`official_vocabulary`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
# torch where masks are encoded (_id_masks, MaskCondition.encode / empty): the synthesis prepare tasks and the
# serving client only read vocabularies, and a fresh Ray worker spends seconds importing it

MASK_ENCODINGS = ("ratio", "linear")


class UnknownOrganError(ValueError):
    """A mask holds an organ the bundle's controller was never trained on; ``organs`` lists them."""

    def __init__(self, organs: Sequence[str], vocabulary: Sequence[str]):
        self.organs = list(organs)
        super().__init__(f"organ(s) {self.organs} are not in the generator's vocabulary {sorted(vocabulary)}")


def mask_to_condition(mask: np.ndarray | torch.Tensor, num_ids: int = 255, encoding: str = "ratio") -> torch.Tensor:
    """Organ-id masks ``[B, H, W]`` (uint8) → condition ``[B, 1, H, W]`` float in [0, 1], by id (no vocabulary).

    ``encoding="ratio"``: organ ``k`` gets ``k / (k + 1)`` (½, ⅔, ¾, ...), so every id is distinct and the
    organ/background contrast is at least ½ whatever the id range (``k / 255`` would leave the usual ids 1–6
    within 0.025 of the background, a signal the controller barely learns from). ``encoding="linear"``:
    ``k / num_ids``. An all-zero mask is the empty condition (slices without masks); ``num_ids`` is the largest
    id accepted.
    """
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}: choose from {MASK_ENCODINGS}")
    ids = _id_masks(mask, num_ids).float()
    cond = ids / (ids + 1.0) if encoding == "ratio" else ids / float(num_ids)
    return cond.unsqueeze(1)


def _id_masks(mask: np.ndarray | torch.Tensor, num_ids: int = 255) -> torch.Tensor:
    import torch

    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks must be [B, H, W], got shape {tuple(m.shape)}")
    if m.is_floating_point():
        raise ValueError(f"masks must hold integer organ ids, got dtype {m.dtype}")
    if m.numel() and (int(m.min()) < 0 or int(m.max()) > num_ids):
        raise ValueError(f"mask organ ids must lie in [0, {num_ids}], got [{int(m.min())}, {int(m.max())}]")
    return m.long()


@dataclass(frozen=True)
class MaskCondition:
    """How one bundle turns masks into its controller's input (see the module docstring)."""

    organs: dict[str, float] | None = None  # name → intensity (one-hot: channel); None: by raw id (``encoding``)
    background: float = 0.0
    default: float | None = None  # intensity of an organ not in ``organs`` (None: refused)
    encoding: str = "ratio"  # without a vocabulary: ratio / linear; with one: vocabulary / onehot
    weights: dict[str, float] = field(default_factory=dict)  # official release: the organ weights given

    # ----- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_organ_names(cls, names: Sequence[str], onehot: bool = False) -> MaskCondition:
        """Our vocabulary for a training set's organs in rank order: organ ``k`` (1-based) → ``k / (k + 1)``, or
        → channel ``k`` with ``onehot``."""
        ranked = enumerate(dict.fromkeys(names), start=1)
        if onehot:
            return cls(organs={name: float(k) for k, name in ranked}, encoding="onehot")
        return cls(organs={name: k / (k + 1) for k, name in ranked}, encoding="vocabulary")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> MaskCondition:
        vocabulary = manifest.get("organ_vocabulary")
        if vocabulary is None:
            return cls(encoding=manifest.get("mask_encoding", "ratio"))
        encoding = "onehot" if manifest.get("mask_encoding") == "onehot" else "vocabulary"
        return cls(organs={str(k): float(v) for k, v in vocabulary.items()},
                   background=float(manifest.get("condition_background", 0.0)),
                   default=manifest.get("condition_default"), encoding=encoding,
                   weights=dict(manifest.get("organ_weights", {})))

    def manifest_fields(self) -> dict[str, Any]:
        if self.organs is None:
            return {"mask_encoding": self.encoding}
        out = {"mask_encoding": self.encoding, "organ_vocabulary": dict(self.organs),
               "condition_background": self.background}
        if self.default is not None:
            out["condition_default"] = self.default
        if self.weights:
            out["organ_weights"] = dict(self.weights)
        return out

    # ----- use ----------------------------------------------------------------------------------------------
    @property
    def by_name(self) -> bool:
        return self.organs is not None

    @property
    def channels(self) -> int:
        """Channels of the controller's input: one per organ for one-hot, else one."""
        return len(self.organs) if self.encoding == "onehot" else 1

    def unknown(self, names: Sequence[str]) -> list[str]:
        """Names this condition cannot encode (always none without a vocabulary or with a default)."""
        if self.organs is None or self.default is not None:
            return []
        return [n for n in dict.fromkeys(names) if n not in self.organs]

    def value_table(self, organ_map: Mapping[int, str] | None, present: Sequence[int] | None = None) -> np.ndarray:
        """Intensity per id 0–255 for masks labelled by ``organ_map``. Organs outside the vocabulary raise
        :class:`UnknownOrganError` when among the ``present`` ids (default: every id of the map); others stay
        background, as do ids the map does not name."""
        table = np.full(256, self.background, np.float32)
        if organ_map is None:
            raise ValueError("this generator conditions on organ names: each mask needs its organ_map (id → name)")
        present = set(int(i) for i in organ_map) if present is None else {int(i) for i in present}
        missing = self.unknown([name for oid, name in organ_map.items() if int(oid) in present])
        if missing:
            raise UnknownOrganError(missing, self.organs or {})
        for oid, name in organ_map.items():
            if not 0 < int(oid) < 256:
                raise ValueError(f"organ_map id {oid} ({name!r}) must lie in 1-255")
            if name in self.organs or self.default is not None:
                table[int(oid)] = self.organs.get(name, self.default)
        return table

    def encode(self, masks: np.ndarray | torch.Tensor,
               organ_maps: Mapping[int, str] | Sequence[Mapping[int, str] | None] | None = None) -> torch.Tensor:
        """``[B, H, W]`` id masks → ``[B, C, H, W]`` float32 (``C`` = :attr:`channels`); ``organ_maps``: one per
        mask or one for all."""
        import torch

        if self.organs is None:
            return mask_to_condition(masks, encoding=self.encoding)
        ids = _id_masks(masks)
        maps = per_mask(organ_maps, len(ids))
        out = torch.empty(ids.shape, dtype=torch.float32)
        for i, organ_map in enumerate(maps):
            table = torch.from_numpy(self.value_table(organ_map, present=ids[i].unique().tolist()))
            out[i] = table[ids[i]]
        if self.encoding == "onehot":  # out holds channel numbers, 0 = background
            return torch.nn.functional.one_hot(out.long(), self.channels + 1)[..., 1:].permute(0, 3, 1, 2).float()
        return out.unsqueeze(1)

    def empty(self, batch: int, size: int) -> torch.Tensor:
        """The condition of slices without a mask (all background)."""
        import torch

        if self.encoding == "onehot":
            return torch.zeros(batch, self.channels, size, size)
        return torch.full((batch, 1, size, size), self.background if self.organs is not None else 0.0)


def per_mask(organ_maps, n: int) -> list:
    """``organ_maps`` as one entry per mask: a single map (or None) is repeated ``n`` times."""
    maps = [organ_maps] * n if organ_maps is None or isinstance(organ_maps, Mapping) else list(organ_maps)
    if len(maps) != n:
        raise ValueError(f"organ_maps: {len(maps)} for {n} masks")
    return maps


def official_vocabulary(weights: Mapping[str, float] | None = None) -> MaskCondition:
    """The official MRGen release's condition: background −1, organ → 2·w − 1 (``weights`` name → w, every
    organ not named w = 1.0; its CHAOS weights: liver 0.3, right kidney 0.5, left kidney 0.4, spleen 0.6)."""
    weights = {str(k): float(v) for k, v in (weights or {}).items()}
    bad = {k: v for k, v in weights.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"organ weights must lie in [0, 1], got {bad}")
    return MaskCondition(organs={name: 2 * w - 1 for name, w in weights.items()}, background=-1.0, default=1.0,
                         encoding="vocabulary", weights=weights)
