"""Per-stage Ray Data streams from MRGen-DB shards, and their decoding on each training worker.

The driver builds a lazy dataset per stage (nothing is materialised); Ray Train splits it across workers
(``streaming_split``) and each worker decodes its batches' raw bytes itself, so no extra Ray Data stage
competes with the trainers for CPUs.

* ``vae``: every slice (image only).
* ``unet``: image + prompt.
* ``controlnet``: source slices with masks, plus slices without a mask (trained with an empty condition, as
  the paper does to keep text control intact) sampled to ``unmasked_fraction`` of the stream.

Each pass is shuffled (``shuffle``): shards hold one dataset / modality each, so an unshuffled stream trains on
one modality, or on all masked rows and then all unmasked ones, for long stretches (measured on the demo's DB:
~100 masked-only batches, then ~35 with only empty conditions, every pass).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from mrgen.datasets import store
from mrgen.datasets.schema import decode_image, decode_mask, decode_organ_map
from mrgen.jobs.train.config import TrainConfig

STAGE_COLUMNS = {
    "vae": ["height", "width", "image"],
    "unet": ["height", "width", "image", "prompt"],
    "controlnet": ["height", "width", "image", "prompt", "has_mask", "mask", "organ_map"],
}


def read_slices(db_uri: str, columns: list[str], **filters: Any):
    """The DB's lazy Ray Dataset of ``columns`` for the rows matching ``filters``."""
    return store.read_slices(db_uri, columns=columns, **filters)


def _mask_counts(db_uri: str, filters: dict[str, Any]) -> tuple[int, int]:
    """Rows with / without a mask in the shards the filters select (from the index alone: an estimate)."""
    index = store.load_index(db_uri)
    with_mask = without = 0
    for shard in store.select_shards(index, **filters):
        counts = shard.values.get("has_mask", {})
        with_mask += counts.get("true", 0)
        without += counts.get("false", 0)
    return with_mask, without


def build_dataset(db_uri: str, config: TrainConfig, stage: str):
    """The Ray Dataset a stage trains on: ``data_repeat`` passes over the stage's selection per epoch (each epoch
    restarts the read, which on a small DB would otherwise stall the workers every few steps); lazy, or with
    ``cache_data`` read once into the object store, so later epochs start without reading. The rows are the same
    either way (every pass's seeds are fixed); the order of blocks within an epoch may differ."""
    passes = [_one_pass(db_uri, config, stage, seed=config.seed + i) for i in range(config.data_repeat)]
    ds = passes[0].union(*passes[1:]) if len(passes) > 1 else passes[0]
    ds = ds.materialize() if config.cache_data else ds
    ds.context.enable_progress_bars = False  # rows of an endless split tell a person nothing; the loop prints steps
    return ds


def _one_pass(db_uri: str, config: TrainConfig, stage: str, seed: int):
    ds = _selection(db_uri, config, stage, seed)
    return ds.random_shuffle(seed=seed) if config.shuffle == "global" else ds.randomize_block_order(seed=seed)


def _selection(db_uri: str, config: TrainConfig, stage: str, seed: int):
    filters = config.stage(stage).selection()
    columns = STAGE_COLUMNS[stage]
    if stage != "controlnet":
        return read_slices(db_uri, columns, **filters)
    masked = read_slices(db_uri, columns, has_mask=True, **filters)
    if config.unmasked_fraction == 0:
        return masked
    n_masked, n_unmasked = _mask_counts(db_uri, filters)
    if n_unmasked == 0:
        return masked
    f = config.unmasked_fraction
    rate = min(1.0, f * n_masked / ((1 - f) * n_unmasked))
    unmasked = read_slices(db_uri, columns, has_mask=False, **filters)
    if rate < 1.0:
        unmasked = unmasked.random_sample(rate, seed=seed)
    return masked.union(unmasked)


def decode(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A numpy batch of raw rows → ``image`` float32 [B,H,W] (+ ``mask`` uint8 [B,H,W], ``prompt`` list)."""
    h, w = int(batch["height"][0]), int(batch["width"][0])
    out: dict[str, Any] = {"image": np.stack([decode_image(b, h, w) for b in batch["image"]])}
    if "prompt" in batch:
        out["prompt"] = [str(p) for p in batch["prompt"]]
    if "mask" in batch:
        out["mask"] = np.stack([decode_mask(m, h, w) if m is not None else np.zeros((h, w), np.uint8)
                                for m in batch["mask"]])
        out["has_mask"] = np.asarray(batch["has_mask"], dtype=bool)
    if "organ_map" in batch:
        out["organ_map"] = [_organ_map(str(text)) for text in batch["organ_map"]]
    return out


@functools.lru_cache(maxsize=256)
def _organ_map(text: str) -> dict[int, str]:
    return decode_organ_map(text)


class BatchStream:
    """Endless decoded batches of a worker's shard, epoch after epoch, with the time spent waiting for them.

    ``position`` (epoch, batch within epoch) is saved in checkpoints; :meth:`skip_to` replays a shard up to a
    saved position on resume (the shuffle seed depends on the epoch, so the replay sees the same order).
    """

    def __init__(self, shard, batch_size: int, shuffle_buffer: int, seed: int):
        self.shard, self.batch_size, self.shuffle_buffer, self.seed = shard, batch_size, shuffle_buffer, seed
        self.epoch, self.batch_in_epoch = 0, 0
        self.wait_s = 0.0
        self._it: Iterator | None = None

    def _epoch_iter(self) -> Iterator:
        kwargs: dict[str, Any] = {"batch_size": self.batch_size, "batch_format": "numpy", "drop_last": True,
                                  "prefetch_batches": 2}
        if self.shuffle_buffer:
            kwargs.update(local_shuffle_buffer_size=self.shuffle_buffer, local_shuffle_seed=self.seed + self.epoch)
        return iter(self.shard.iter_batches(**kwargs))

    def _next_raw(self) -> dict[str, np.ndarray]:
        for attempt in range(2):
            if self._it is None:
                self._it = self._epoch_iter()
            try:
                batch = next(self._it)
                self.batch_in_epoch += 1
                return batch
            except StopIteration:
                self._it = None
                if self.batch_in_epoch == 0:
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
        raise RuntimeError(f"the training data yields no full batch of {self.batch_size} for this worker: "
                           "use a smaller batch_size, fewer workers or a larger DB selection")

    def next(self) -> dict[str, Any]:
        start = time.perf_counter()
        batch = decode(self._next_raw())
        self.wait_s += time.perf_counter() - start
        return batch

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def skip_to(self, position: dict[str, int]) -> None:
        """Advance to a saved position: earlier epochs are not re-read, the current one is replayed."""
        self.epoch, self.batch_in_epoch, self._it = int(position.get("epoch", 0)), 0, None
        for _ in range(int(position.get("batch_in_epoch", 0))):
            self._next_raw()
