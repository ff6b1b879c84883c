"""Classifier-free-guidance sampling of a :class:`~advbench.model.Model` with a choice of diffusers scheduler.

The sampler is built ``from_config`` of the model's training scheduler, as diffusers pipelines swap
schedulers. Every image has its own generator seeded from ``(ctx.seed, image index)`` — for its initial noise
and any noise a stochastic scheduler adds — so an image does not depend on the batch it was generated in.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch

from advbench.errors import ParamError
from advbench.interfaces import Context

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


@dataclass
class SamplingConfig:
    """How to sample: scheduler name, denoising steps, guidance scale (≤ 1 disables CFG), batch sizes."""

    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5
    images_per_prompt: int = 1
    batch_size: int = 8
    eta: float = 0.0  # DDIM's stochasticity (0: deterministic DDIM)

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ParamError(f"unknown sampling scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        for name in ("steps", "images_per_prompt", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParamError(f"sampling {name} must be a positive integer, got {value!r}")
        if self.guidance_scale < 0:
            raise ParamError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.eta <= 1.0:
            raise ParamError(f"eta must be in [0, 1], got {self.eta}")


def build_scheduler(model, name: str):
    """The named diffusers scheduler, configured from the model's training scheduler."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    extra = {"skip_prk_steps": True} if name == "pndm" else {}  # as Stable Diffusion's pipelines run PNDM
    return cls.from_config(model.scheduler.config, **extra)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run seeded ``seed``."""
    return int.from_bytes(hashlib.sha256(f"advbench-image|{seed}|{index}".encode()).digest()[:8], "little") >> 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [-1, 1] → uint8 B×H×W×3."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def generate(model, prompts: list[str] | torch.Tensor, cfg: SamplingConfig, ctx: Context,
             uncond: torch.Tensor | None = None) -> np.ndarray:
    """Generate ``cfg.images_per_prompt`` images per prompt, in prompt order: uint8 N×H×W×3.

    ``prompts`` are strings, or conditioning tensors: text-encoder hidden states N×L×D, one per "prompt"
    (what a defense or an attack that edits embeddings — a learned token, a mined concept — samples from).
    String prompts pass through ``model.rewrite_prompt`` (a learned token or identifier replaces the class
    name). The unconditional branch of classifier-free guidance is the empty prompt, or ``uncond`` (1×L×D).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 3:
            raise ParamError(f"conditioning must be N x tokens x width hidden states, got shape {tuple(prompts.shape)}")
        items: list = list(prompts)
    else:
        items = [model.rewrite_prompt(p) for p in prompts]
    jobs = [(i * cfg.images_per_prompt + j, item) for i, item in enumerate(items) for j in range(cfg.images_per_prompt)]
    origin = model.device
    device = torch.device(ctx.device)
    model.to(device)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ctx.mixed_precision)
    out = []
    progress = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), console=Console(stderr=True),
                        transient=True, disable=not ctx.progress)
    try:
        precision = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        with torch.inference_mode(), progress, precision:
            task = progress.add_task("sampling", total=len(jobs))
            if cfg.guidance_scale <= 1:
                uncond = None
            elif uncond is None:
                uncond = model.encode_prompts([""])
            for start in range(0, len(jobs), cfg.batch_size):
                chunk = jobs[start:start + cfg.batch_size]
                conditioning = [item for _, item in chunk]
                cond = (model.encode_prompts(conditioning) if isinstance(conditioning[0], str)
                        else torch.stack(conditioning).to(device))
                if uncond is not None and uncond.shape[1:] != cond.shape[1:]:
                    raise ParamError(f"the unconditional embedding {tuple(uncond.shape[1:])} and the conditioning "
                                     f"{tuple(cond.shape[1:])} must have the same tokens x width")
                out.append(_sample_batch(model, cond, [image_seed(ctx.seed, i) for i, _ in chunk], uncond, cfg, device))
                progress.update(task, advance=len(chunk))
    finally:
        model.to(origin)
    return np.concatenate(out) if out else np.zeros((0, model.resolution, model.resolution, 3), np.uint8)


def _sample_batch(model, cond: torch.Tensor, seeds: list[int], uncond, cfg: SamplingConfig,
                  device: torch.device) -> np.ndarray:
    scheduler = build_scheduler(model, cfg.scheduler)
    scheduler.set_timesteps(cfg.steps, device=device)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = torch.stack([torch.randn(model.latent_shape, generator=g) for g in generators]).to(device)
    latents = latents * scheduler.init_noise_sigma
    guided = uncond is not None
    hidden = torch.cat([uncond.to(cond.device, cond.dtype).expand(len(cond), -1, -1), cond]) if guided else cond
    step_kwargs = {}
    step_params = inspect.signature(scheduler.step).parameters
    if "generator" in step_params:
        step_kwargs["generator"] = generators  # diffusers draws per-sample noise from a list of generators
    if "eta" in step_params:
        step_kwargs["eta"] = cfg.eta
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        pred = model.unet(model_in.to(model.dtype), t, hidden.to(model.dtype)).sample.float()
        if guided:
            # Classifier-free guidance: move from the unconditional prediction towards the conditional one.
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + cfg.guidance_scale * (pred_cond - pred_uncond)
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    return to_uint8(model.decode_latents(latents.to(model.dtype)))
