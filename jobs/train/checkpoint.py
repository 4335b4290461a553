"""Training checkpoints: DeepSpeed state + train state + RNG + a loadable diffusers model folder.

Layout of one checkpoint (every rank writes its own files into a local folder; Ray Train merges them in
storage)::

    deepspeed/state/...          engine.save_checkpoint: weights, optimizer shards (one per ZeRO rank), LR schedule
    train_state.json             rank 0: step, logged history, run id, frozen-weight hashes
    ranks/rank_<r>.json          each rank: data position (epoch, batch in epoch) and RNG states
    model/<part>/                rank 0: config.json + safetensors, loadable with diffusers' from_pretrained
"""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

DS_DIR, DS_TAG = "deepspeed", "state"
TRAIN_STATE = "train_state.json"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def save(folder: Path, engine, rank: int, train_state: dict[str, Any], rank_state: dict[str, Any],
         model: torch.nn.Module, part: str) -> None:
    """Every rank calls this (DeepSpeed's save is collective); rank 0 adds the shared files."""
    engine.save_checkpoint(str(folder / DS_DIR), tag=DS_TAG)
    (folder / "ranks").mkdir(parents=True, exist_ok=True)
    (folder / "ranks" / f"rank_{rank}.json").write_text(json.dumps(rank_state))
    if rank == 0:
        (folder / TRAIN_STATE).write_text(json.dumps(train_state, indent=1))
        model.save_pretrained(str(folder / "model" / part), safe_serialization=True)


def load(folder: Path, engine, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine (weights, optimizer, LR schedule) and return (train state, this rank's state)."""
    rank_file = folder / "ranks" / f"rank_{rank}.json"
    if not rank_file.exists():
        raise FileNotFoundError(f"{rank_file} missing: the checkpoint was written by fewer workers; resume with "
                                "the same number of workers")
    path, _ = engine.load_checkpoint(str(folder / DS_DIR), tag=DS_TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"{folder / DS_DIR}: no DeepSpeed state '{DS_TAG}'")
    return read_train_state(folder), json.loads(rank_file.read_text())


def read_train_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``TRAIN_STATE`` (``TrainState.to_json()`` in jobs/train/loop.py): step, history, run id..."""
    return json.loads((folder / TRAIN_STATE).read_text())
