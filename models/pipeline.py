"""Sampling: text (+ mask) → images, the direct diffusers loop with classifier-free guidance.

Every output image has its own seed: its initial noise (and any sampler noise) comes from its own
``torch.Generator``, so results do not depend on batch size, batch composition or order. The noise is drawn as
diffusers pipelines draw it (``randn_tensor`` with one CPU generator per image: a ``(1, C, H/f, W/f)`` draw each,
times the scheduler's ``init_noise_sigma``), so image ``i`` with seed ``s`` is the image a diffusers-style pipeline
(the official release's included) gives for ``generator=torch.Generator().manual_seed(s)``.

:meth:`MRGenPipeline.sample` also counts what a call spends per image (:class:`SamplingResult`: denoiser rows, VAE
decodes), and can stop images early (:class:`EarlyStop`: a judge looks at each image's predicted clean image at one
step); guidance can be limited to an interval of the steps (``guidance_interval``), where the steps outside it run
one denoiser row per image instead of two.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from mrgen.models.autoencoder import decode_latents
from mrgen.models.bundle import ModelBundle
from mrgen.models.condition import MaskCondition
from mrgen.models.sampling import PAPER_SAMPLING, SamplingSettings, early_stop_step
from mrgen.models.scheduler import build_scheduler


class MRGenPipeline:
    """Built once from a :class:`ModelBundle` (like ``nnUNetPredictor``), then called many times."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device | None = None):
        missing = [name for name in ("vae", "unet", "text_encoder") if getattr(bundle, name) is None]
        if missing:
            raise ValueError(f"MRGenPipeline needs a bundle with vae, unet and text_encoder; missing {missing}")
        self.bundle = bundle
        if device is not None:
            bundle.to(device)
        self.device = bundle.unet.device
        self.dtype = bundle.unet.dtype
        self.latent_channels = int(bundle.unet.config.in_channels)
        self.factor = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
        self.condition = MaskCondition.from_manifest(bundle.manifest)
        cross, width = bundle.unet.config.cross_attention_dim, bundle.text_encoder.width
        if cross != width:
            raise ValueError(f"the unet's config.json cross_attention_dim is {cross} but the text encoder's token "
                             f"width is {width}: the parts come from models of different sizes")

    @property
    def resolution(self) -> int:
        return self.bundle.resolution

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], masks: np.ndarray | torch.Tensor | None, num_candidates: int = 1,
                 sampling: SamplingSettings = PAPER_SAMPLING, *, seeds: Sequence[int] | None = None,
                 batch_size: int | None = None, organ_maps=None, **changes: Any) -> np.ndarray:
        """Images ``[len(prompts) * num_candidates, H, W]`` float32 in [0, 1], mask-major order.

        ``sampling``: sampler, steps, guidance (and the steps it applies to) and the controller's weight (default the
        paper's); ``changes``: fields of :class:`SamplingSettings` that replace its own (``steps=4``).

        ``masks``: uint8 organ ids ``[B, H, W]`` (one per prompt) or ``None`` for text-only generation;
        ``organ_maps``: id → organ name, one per mask or one for all (needed by bundles that condition on organ
        names: ``MaskCondition``; an organ outside their vocabulary raises ``UnknownOrganError``).
        ``seeds``: one per output image (default ``0, 1, ...``). ``batch_size``: images per sampling batch
        (default all); it changes speed and memory, not the images (equal up to float rounding, bitwise for
        equal batching). :meth:`sample` takes the same arguments and also says what the call spent.
        """
        return self.sample(prompts, masks, num_candidates, sampling, seeds=seeds, batch_size=batch_size,
                           organ_maps=organ_maps, **changes).images

    @torch.inference_mode()
    def sample(self, prompts: Sequence[str], masks: np.ndarray | torch.Tensor | None, num_candidates: int = 1,
               sampling: SamplingSettings = PAPER_SAMPLING, *, seeds: Sequence[int] | None = None,
               batch_size: int | None = None, organ_maps=None, early_stop: EarlyStop | None = None,
               **changes: Any) -> SamplingResult:
        """:meth:`generate` with its cost per image (denoiser rows, decodes) and an optional early stop: the
        ``early_stop`` judge sees every image's predicted clean image at one step and stops the ones it rejects
        (their rows leave the batch; the others sample on exactly as they would have)."""
        prompts = list(prompts)
        n = len(prompts) * int(num_candidates)
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        sampling = replace(sampling, **changes) if changes else sampling
        _check_request(len(prompts), num_candidates, seeds, sampling.steps, early_stop)
        condition, size = self._condition(masks, len(prompts), organ_maps)
        rows = [i // num_candidates for i in range(n)]
        step = batch_size or n
        parts = []
        for start in range(0, n, step):
            idx = rows[start:start + step]
            cond = condition[idx] if condition is not None else None
            parts.append(self._sample([prompts[i] for i in idx], cond, seeds[start:start + step], size, sampling,
                                      early_stop=early_stop, rows=np.arange(start, start + len(idx))))
        return SamplingResult.concatenate(parts, sampling.steps, early_stop)

    def _condition(self, masks, num_prompts: int, organ_maps=None) -> tuple[torch.Tensor | None, int]:
        """The controller's input ``[B, C, H, W]`` (None for text-only) and the image side to generate."""
        if masks is None:
            return None, self.resolution
        if self.bundle.controlnet is None:
            raise ValueError("masks given but the model bundle has no controlnet part")
        condition = self.condition.encode(masks, organ_maps)
        channels = int(self.bundle.controlnet.config.conditioning_channels)
        if channels != condition.shape[1]:
            if condition.shape[1] != 1:
                raise ValueError(f"the bundle's controller takes {channels} condition channels, its mask encoding "
                                 f"({self.condition.encoding}) gives {condition.shape[1]}")
            condition = condition.expand(-1, channels, -1, -1)  # a controller trained on RGB renderings of the mask
        if condition.shape[0] != num_prompts:
            raise ValueError(f"masks: {condition.shape[0]} masks for {num_prompts} prompts")
        size = condition.shape[-1]
        if condition.shape[-2] != size or size % self.factor:
            raise ValueError(f"masks must be square with a side divisible by {self.factor}, got "
                             f"{tuple(condition.shape[-2:])}")
        return condition, size

    def generate_text_only(self, prompts: Sequence[str], num_candidates: int = 1, **kwargs) -> np.ndarray:
        return self.generate(prompts, None, num_candidates, **kwargs)

    def _sample(self, prompts: list[str], condition: torch.Tensor | None, seeds: list[int], size: int,
                sampling: SamplingSettings, *, early_stop: EarlyStop | None = None,
                rows: np.ndarray | None = None) -> SamplingResult:
        """One sampling batch; ``rows``: the batch's image indices in the whole request (what a judge is told)."""
        bundle = self.bundle
        scheduler = build_scheduler(sampling.sampler, bundle.scheduler_config)
        scheduler.set_timesteps(sampling.steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (len(seeds), self.latent_channels, size // self.factor, size // self.factor)
        latents = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        # latents and scheduler arithmetic stay float32; only the networks run in the bundle's dtype
        latents = (latents * scheduler.init_noise_sigma).to(self.device)
        use_cfg = sampling.guidance != 1.0
        text = bundle.text_encoder.encode(([""] * len(prompts) if use_cfg else []) + prompts)
        if condition is not None:
            condition = condition.to(self.device, self.dtype)
        batch = _Batch(text.to(self.device, self.dtype), condition, use_cfg)
        alive = np.arange(len(seeds))  # positions in this batch still sampling
        rows = np.arange(len(seeds)) if rows is None else np.asarray(rows)
        spent, decodes = np.zeros(len(seeds), np.int64), np.zeros(len(seeds), np.int64)
        probe = early_stop.step(sampling.steps) if early_stop is not None else None
        step_kwargs = {"generator": generators} if _takes_generator(scheduler) else {}
        for i, t in enumerate(scheduler.timesteps):
            guided = sampling.guided(i)
            noise = self._denoise(latents, t, scheduler, batch, guided, sampling)
            spent[alive] += 2 if guided else 1
            if i == probe:
                x0 = self._decode(predicted_x0(scheduler, latents, noise, t))
                decodes[alive] += 1
                keep = _verdict(early_stop.judge(x0, rows[alive]), len(alive))
                if not keep.all():
                    index = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
                    latents, noise = latents[index], noise[index]
                    batch = batch.select(index)
                    generators = [g for g, k in zip(generators, keep) if k]
                    step_kwargs = {"generator": generators} if step_kwargs else {}
                    _select_scheduler_rows(scheduler, index, len(alive))
                    alive = alive[keep]
                    if not len(alive):
                        break
            latents = scheduler.step(noise, t, latents, return_dict=False, **step_kwargs)[0]
        finished = np.zeros(len(seeds), bool)
        finished[alive] = True
        if len(alive):
            images = self._decode(latents)
            decodes[alive] += 1
        else:
            images = np.zeros((0, size, size), np.float32)
        return SamplingResult(images=images, finished=finished, denoiser_rows=spent, decodes=decodes)

    def _denoise(self, latents: torch.Tensor, t, scheduler, batch: _Batch, guided: bool,
                 sampling: SamplingSettings) -> torch.Tensor:
        """The noise prediction (float32) at ``t``: guided (an unconditional and a conditional row per image) or the
        conditional pass alone."""
        bundle = self.bundle
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t).to(self.dtype)
        text, condition = batch.inputs(guided)
        residuals = {}
        if condition is not None:
            down, mid = bundle.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=condition,
                                          conditioning_scale=sampling.conditioning_scale, return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = bundle.unet(model_in, t, encoder_hidden_states=text, return_dict=False, **residuals)[0]
        noise = noise.float()
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + sampling.guidance * (cond - uncond)
        return noise

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents → images ``[B, H, W]`` float32 in [0, 1] (the final images and the early judge's alike)."""
        images = decode_latents(self.bundle.vae, latents, self.bundle.latent_scaling)
        return images[:, 0].float().cpu().numpy()


@dataclass(frozen=True)
class EarlyStop:
    """Early rejection: at step ``k = round(at * steps)`` (1 <= k < steps) every image still sampling has its
    predicted clean latent x̂₀ (the scheduler's own, from that step's noise prediction) decoded to an image in
    [0, 1] as final images are, and ``judge(images [m, H, W] float32, rows [m] int)`` answers one bool per image,
    True to go on; ``rows`` are the images' indices in the request (mask-major, as the output). A rejected image
    stops there: its rows leave the batch, having run steps 0..k."""

    at: float
    judge: Callable[[np.ndarray, np.ndarray], Sequence[bool]]

    def step(self, steps: int) -> int:
        """The step index ``k`` the judge looks at, for ``steps`` steps; a ValueError when there is none."""
        return early_stop_step(self.at, steps)


@dataclass
class SamplingResult:
    """What :meth:`MRGenPipeline.sample` made and spent, per requested image (mask-major order, ``n`` images).

    ``images`` holds the FINISHED images only, in request order (``finished`` says which: without an early stop,
    every one, and ``images`` is what :meth:`MRGenPipeline.generate` returns). ``denoiser_rows``: batch rows the
    image ran through controller and UNet, summed over its steps (2 at a guided step, 1 at an unguided one; a
    stopped image counts its steps up to the probe). ``decodes``: VAE decodes spent on it (1 for the final image,
    +1 for a probe of its x̂₀)."""

    images: np.ndarray          # float32 [finished.sum(), H, W] in [0, 1]
    finished: np.ndarray        # bool [n]; False: stopped early by the judge
    denoiser_rows: np.ndarray   # int64 [n]
    decodes: np.ndarray         # int64 [n]
    probe_step: int | None = None  # the step the judge looked at (None: no early stop)

    @property
    def total_denoiser_rows(self) -> int:
        return int(self.denoiser_rows.sum())

    def finished_rows(self) -> np.ndarray:
        """Request indices of ``images``' rows."""
        return np.flatnonzero(self.finished)

    @classmethod
    def concatenate(cls, parts: Sequence[SamplingResult], steps: int, early_stop: EarlyStop | None = None
                    ) -> SamplingResult:
        return cls(images=np.concatenate([p.images for p in parts]).astype(np.float32),
                   finished=np.concatenate([p.finished for p in parts]),
                   denoiser_rows=np.concatenate([p.denoiser_rows for p in parts]),
                   decodes=np.concatenate([p.decodes for p in parts]),
                   probe_step=early_stop.step(steps) if early_stop is not None else None)


class _Batch:
    """The text states and controller input of the images still sampling, guided (unconditional rows first, as
    one text encoding gave them) and conditional-only."""

    def __init__(self, text: torch.Tensor, condition: torch.Tensor | None, use_cfg: bool):
        self.text, self.condition, self.use_cfg = text, condition, use_cfg
        self.guided_condition = (torch.cat([condition, condition]) if use_cfg and condition is not None
                                 else condition)

    def inputs(self, guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if guided:
            return self.text, self.guided_condition
        n = self.text.shape[0] // 2 if self.use_cfg else 0
        return self.text[n:], self.condition

    def select(self, index: torch.Tensor) -> _Batch:
        text = self.text
        if self.use_cfg:
            n = text.shape[0] // 2
            text = torch.cat([text[:n][index], text[n:][index]])
        else:
            text = text[index]
        return _Batch(text, self.condition[index] if self.condition is not None else None, self.use_cfg)


def predicted_x0(scheduler, sample: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """The clean latent x̂₀ the model predicts from ``sample`` (x_t) at timestep ``t``, by the scheduler's
    ``prediction_type`` and ``alphas_cumprod``: ε-prediction (x_t − sqrt(1−ᾱ_t)·ε) / sqrt(ᾱ_t)."""
    alpha = scheduler.alphas_cumprod[int(t)].to(device=sample.device, dtype=torch.float32)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    if kind == "sample":
        return model_output
    raise ValueError(f"scheduler prediction_type {kind!r}: no x0 prediction for it")


def _takes_generator(scheduler) -> bool:
    """DDPM, DDIM and DPM-Solver++ draw their noise from the images' generators; UniPC draws none."""
    return "generator" in inspect.signature(scheduler.step).parameters


def _verdict(answer, n: int) -> np.ndarray:
    keep = np.asarray(answer)
    if keep.shape != (n,) or not (keep.dtype == bool or np.issubdtype(keep.dtype, np.integer)):
        raise ValueError(f"early stop judge must answer one bool per image ({n}), got {keep.dtype} {keep.shape}")
    return keep.astype(bool)


def _select_scheduler_rows(scheduler, index: torch.Tensor, batch: int) -> None:
    """Keep only ``index``'s rows of what a multistep scheduler remembers of the batch (DPM-Solver++'s and UniPC's
    previous outputs, UniPC's last sample): latent-shaped tensors ``[batch, C, h, w]``, alone or in lists."""
    def rows(value):
        return torch.is_tensor(value) and value.ndim == 4 and value.shape[0] == batch

    for name, value in list(vars(scheduler).items()):
        if rows(value):
            setattr(scheduler, name, value[index.to(value.device)])
        elif isinstance(value, list) and any(rows(v) for v in value):
            setattr(scheduler, name, [v[index.to(v.device)] if rows(v) else v for v in value])


def _check_request(num_prompts: int, num_candidates: int, seeds: list[int], steps: int,
                   early_stop: EarlyStop | None = None) -> None:
    """Checks a request (ValueError naming what is wrong; the sampling settings check themselves)."""
    n = num_prompts * num_candidates
    if num_candidates < 1 or num_prompts < 1:
        raise ValueError(f"need at least one prompt and num_candidates >= 1, "
                         f"got {num_prompts} prompts and num_candidates={num_candidates}")
    if len(seeds) != n:
        raise ValueError(f"seeds: need one per output image ({num_prompts} prompts × {num_candidates} = {n}), "
                         f"got {len(seeds)}")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise ValueError(f"seeds must lie in [0, 2**63), got {bad[:3]}")
    if early_stop is not None:
        early_stop.step(steps)
