"""Preparing a process for nnU-Net v2: its folders and knobs are environment variables, some read at import.

Call :func:`prepare_process` first thing in the Ray task, before anything imports ``nnunetv2``. The tasks run
with ``max_calls=1`` so that every run gets a fresh worker process and nothing leaks between runs.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from mrgen.jobs.segment.config import SegmentConfig
# torch where it is used: nnU-Net's environment is set before torch or nnU-Net load


def prepare_process(workdir: Path, config: SegmentConfig) -> dict[str, Path]:
    """Point nnU-Net at fresh folders under ``workdir``, limit its processes and threads, seed everything."""
    folders = {name: workdir / name for name in ("raw", "preprocessed", "results")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "nnUNet_raw": str(folders["raw"]),
        "nnUNet_preprocessed": str(folders["preprocessed"]),
        "nnUNet_results": str(folders["results"]),
        "nnUNet_def_n_proc": str(config.processes),
        # The planner calls torch.set_num_threads(nnUNet_n_proc_DA), so it must be >= 1 until training starts.
        "nnUNet_n_proc_DA": str(max(1, config.augmentation_processes)),
        "nnUNet_compile": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
        "MPLBACKEND": "Agg",
    })
    import torch  # after the environment above: nnU-Net and OpenMP read it when they load

    torch.set_num_threads(config.torch_threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    return folders


def torch_device(config: SegmentConfig):
    import torch

    device = config.resolved_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("segment.device is cuda but this Ray task sees no GPU (check num_gpus and the cluster)")
    return torch.device(device)
