"""Faster sampling that samples the same thing: the generator's dtype, the denoiser's memory format, compilation.

:func:`accelerate` returns the bundle with its autoencoder, UNet and controller set up one way (copies, so the
bundle given keeps its own; ``inplace=True`` changes its modules instead); :class:`MRGenPipeline` samples with the
result unchanged. The text encoder is left as it is: it runs once per prompt, and the pipeline casts its states.

- ``dtype``: the networks' dtype (bfloat16 is the GPU check's and the service's; float16 has the same tensor-core
  rate and a narrower range);
- ``channels_last``: UNet and controller weights in NHWC, the layout cuDNN's tensor-core convolutions take without a
  transpose;
- ``compile_mode``: ``torch.compile`` of the UNet's and the controller's forward (``nn.Module.compile``, so the
  modules keep their type, config and device): ``default``, ``max-autotune-no-cudagraphs`` (Triton and cuBLAS
  kernels tuned per shape), ``reduce-overhead`` / ``max-autotune`` (the same, replayed as CUDA graphs: CUDA only).
  The first call at a new shape compiles (minutes at paper scale); a request sampled in equal batches keeps one.

Pure PyTorch (diffusers' modules): the GPU check measures each setting (``jobs/bench/gpu_bench.py``,
``generator_efficiency``); a stage that loads its bundle once applies the best one to it.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from mrgen.models.bundle import ModelBundle

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(device: str | torch.device) -> torch.dtype:
    """The networks' dtype for sampling on ``device``: bfloat16 on CUDA (what the GPU check measures, half the bytes
    and the tensor cores' rate), float32 elsewhere (a CPU's bfloat16 kernels are slower)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def accelerate(bundle: ModelBundle, *, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
               channels_last: bool = False, compile_mode: str | None = None, inplace: bool = False) -> ModelBundle:
    """``bundle`` with its autoencoder, UNet and controller on ``device`` in ``dtype`` (None: as they are), the UNet
    and controller in ``channels_last`` memory format and compiled with ``compile_mode`` (None: eager). The other
    parts (text encoder, scheduler, manifest) are the bundle's own. Give it an eager bundle: a compiled module
    is neither copied nor compiled again. ValueError naming a bad mode or dtype, or a CUDA-graph mode off CUDA."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else dtype
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES} or None, got {compile_mode!r}")
    if bundle.unet is None:
        raise ValueError("accelerate needs a bundle with a unet")
    where = torch.device(device) if device is not None else bundle.unet.device
    if where.type == "cuda" and where.index is None:
        where = torch.device("cuda", torch.cuda.current_device())
    if compile_mode in CUDA_GRAPH_MODES and where.type != "cuda":
        raise ValueError(f"compile_mode {compile_mode!r} replays CUDA graphs: it needs a CUDA device, not {where}")

    def prepared(module: torch.nn.Module | None, denoiser: bool) -> torch.nn.Module | None:
        if module is None:
            return None
        memory = denoiser and channels_last
        compiled = compile_mode if denoiser else None
        moves = (where != module.device) or (dtype is not None and dtype != module.dtype)
        if not (moves or memory or compiled):
            return module
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise ValueError(f"accelerate: {type(module).__name__} is compiled already; give it an eager bundle")
        module = module if inplace else copy.deepcopy(module)
        module.to(device=where, **({"dtype": dtype} if dtype is not None else {}))
        if memory:
            module.to(memory_format=torch.channels_last)
        if compiled:
            module.compile(mode=compiled)
        return module

    parts = {"vae": prepared(bundle.vae, False), "unet": prepared(bundle.unet, True),
             "controlnet": prepared(bundle.controlnet, True)}
    if inplace:
        for name, module in parts.items():
            setattr(bundle, name, module)
        return bundle
    return dataclasses.replace(bundle, **parts)
