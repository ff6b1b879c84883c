"""GPU smoke benchmark: a fine-tune step of a Stable-Diffusion-1.5-size model, full fine-tuning vs a freeze mask.

    python benchmarks/gpu_smoke.py                      # on CUDA: SD 1.5's sizes, random weights, no download
    python benchmarks/gpu_smoke.py --ratios 0.1,0.3,0.5 --mask path/to/freeze_mask.json
    python benchmarks/gpu_smoke.py --size tiny          # any device: the same code at toy size (what CI runs)

FreezeAsGuard's claim (Huang & Gao, arXiv 2405.17472): freezing a share p of the UNet's tensors also saves the
attacker 13-21 % of the fine-tuning time and 22-48 % of the GPU memory. This script measures that claim on the
shared engine (``advbench.finetune.finetune``, what every attack trains with): the model is SD 1.5's UNet,
VAE and CLIP text encoder built from their configs (written below, as in the ``runwayml/stable-diffusion-v1-5``
folders) with random weights, and its training scheduler comes from SD 1.5's PNDM config. Rows:

- ``full``: every UNet tensor trains (the undefended attacker);
- ``R-p``: the ``random`` defense's mask at freezing ratio p (FreezeAsGuard's R-p baseline, the same rounding
  and constraint as FG-p); the frozen tensors get ``requires_grad=False`` and stay out of Adam, so they have no
  gradient and no optimizer state;
- ``mask``: a FreezeAsGuard mask learned elsewhere (``--mask``: the protect stage's ``freeze_mask.json``). A
  learned mask is not computed here: it needs the bilevel learning on real data (hours on SD).

Every row starts from the same initial weights and trains the same batch (random pixels, one caption) with Adam
for ``--warmup`` + ``--steps`` steps; ``s/step`` is the median over the timed steps (stamped after each
optimizer step) and ``peak MB`` the engine's measure on CUDA (peak allocated, weights included); ``grads+Adam
MB`` counts the fp32 gradients and Adam moments the trainable tensors hold (on any device). Savings are relative
to ``full``. Defaults on CUDA: batch 4 at 512 px, bf16 autocast and gradient checkpointing (the official
FreezeAsGuard scripts: batch 1 × 4 accumulation, bf16, checkpointing); on CPU: the tiny size, batch 2, fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------- Stable Diffusion 1.5's configs
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": 768, "attention_head_dim": 8,
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
}
SD15_VAE = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower; the token ids come from the tokenizer (SD 1.5's config says 0/2/1)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}
SD15_SCHEDULER = {  # scheduler/scheduler_config.json of SD 1.5 (PNDMScheduler)
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
}
# The same architecture at toy size: every block type and the 8× VAE are kept, the widths shrink (64 px images).
TINY = {
    "unet": {"sample_size": 8, "layers_per_block": 1, "block_out_channels": (16, 16, 32, 32), "norm_num_groups": 8,
             "cross_attention_dim": 32, "attention_head_dim": 4},
    "vae": {"sample_size": 64, "layers_per_block": 1, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 8},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
             "projection_dim": 32},
}
SIZES = ("full", "tiny")


def sd15_parts(size: str = "full", seed: int = 0) -> dict:
    """SD 1.5's parts with random weights, seeded: ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` (CLIP's BPE,
    built offline, 77 tokens), ``scheduler`` (PNDM with SD 1.5's config, as its pipeline folder has it)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from advbench.tokenizer import clip_tokenizer

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    shrink = TINY if size == "tiny" else {"unet": {}, "vae": {}, "text": {}}
    tokenizer = clip_tokenizer(max_length=SD15_TEXT["max_position_embeddings"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**SD15_UNET, **shrink["unet"]})
        vae = AutoencoderKL(**{**SD15_VAE, **shrink["vae"]})
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **{**SD15_TEXT, **shrink["text"]}, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER)}  # ignores clip_sample, as loading SD 1.5 does


def sd15_model(size: str = "full", seed: int = 0):
    """An :class:`advbench.model.Model` of SD 1.5's parts; its training scheduler is DDPM from the PNDM config,
    as ``Model.load`` builds it from a pipeline folder."""
    from diffusers import DDPMScheduler

    from advbench.model import Model

    p = sd15_parts(size, seed)
    return Model(p["unet"], p["text_encoder"], p["tokenizer"], DDPMScheduler.from_config(p["scheduler"].config),
                 vae=p["vae"])


# ---------------------------------------------------------------------------------------------- masks
def random_mask(model, p: float, seed: int = 0) -> list[str]:
    """The frozen UNet tensor names of the ``random`` defense at ratio ``p`` (the plugin itself, as a cell runs it)."""
    from advbench import plugins
    from advbench.interfaces import Context
    from advbench.params import build_params

    cls = plugins.get("defense", "random")
    defense = cls(build_params(cls.Params, {"p": p}, "defense 'random'"))
    protected = defense.protect(model, None, Context(seed=seed, progress=False))  # R-p reads no images
    return protected.constraints[0].frozen_names()


def file_mask(path: str | Path) -> list[str]:
    """The frozen tensor names of a FreezeAsGuard ``freeze_mask.json`` (its protect stage's artifact)."""
    tensors = json.loads(Path(path).read_text())["tensors"]
    return sorted(name for name, entry in tensors.items() if entry["frozen"])


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Row:
    mask: str
    frozen_tensors: int
    total_tensors: int
    trainable_params: int
    optimizer_state: int
    seconds_per_step: float
    peak_mb: float


def time_finetune(model, frozen: list[str], args, label: str) -> Row:
    """Fine-tune a fresh copy of ``model`` with ``frozen`` tensors for warmup + steps steps; one table row."""
    import torch

    from advbench.finetune import FinetuneConfig, finetune
    from advbench.interfaces import Context

    work = copy.deepcopy(model)
    res = work.resolution
    pixels = torch.rand(args.batch_size, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "captions": ["a photo of a person"] * args.batch_size}
    cfg = FinetuneConfig(steps=args.warmup + args.steps, batch_size=args.batch_size, lr=1e-5, optimizer="adam",
                         mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing)
    stamps: list[float] = []

    def stamp(step, loss):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    result = finetune(work, lambda step, gen: dict(batch), cfg, Context(seed=0, device=args.device, progress=False),
                      frozen=frozen, callback=stamp)
    timed = [b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:])]
    del work
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return Row(label, len(frozen), len(list(model.unet.parameters())), result.trainable_params,
               result.optimizer_state_numel, statistics.median(timed), result.peak_memory_mb)


def table(rows: list[Row], cuda: bool) -> str:
    """The markdown table, savings relative to the first (``full``) row. ``grads+Adam MB`` is what a frozen tensor
    no longer holds (fp32 gradient and Adam's two moments), counted; ``peak MB`` is measured on CUDA only (on the
    CPU the resident set never shrinks between rows, so a later row's growth means nothing)."""
    from tabulate import tabulate

    base = rows[0]

    def saved(value, reference):
        return f"{round(100 * (1 - value / reference))} %" if reference > 0 else "n/a"

    body = []
    for r in rows:
        state_mb = 4 * (r.trainable_params + r.optimizer_state) / 2**20
        body.append([r.mask, f"{r.frozen_tensors}/{r.total_tensors}", f"{r.trainable_params / 1e6:.2f}M",
                     f"{r.optimizer_state / 1e6:.2f}M", f"{state_mb:.1f}", f"{r.seconds_per_step:.4f}",
                     saved(r.seconds_per_step, base.seconds_per_step),
                     f"{r.peak_mb:.0f}" if cuda else "-", saved(r.peak_mb, base.peak_mb) if cuda else "-"])
    return tabulate(body, headers=["mask", "frozen tensors", "trainable", "Adam state", "grads+Adam MB", "s/step",
                                   "time saved", "peak MB", "memory saved"], tablefmt="github")


def run(args) -> list[Row]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = sd15_model(args.size, seed=0)  # 512 px at full size: the UNet's 64 latents × the VAE's 8
    masks = [("full", [])]
    masks += [(f"R-{p:g}", random_mask(model, p)) for p in args.ratios]
    if args.mask:
        masks.append((f"mask {Path(args.mask).name}", file_mask(args.mask)))
    rows = []
    for label, frozen in masks:
        rows.append(time_finetune(model, frozen, args, label))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
    return rows


def parse_args(argv=None):
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", choices=SIZES, default=None, help="default: full on CUDA, tiny elsewhere")
    parser.add_argument("--ratios", default="0.3", help="freezing ratios of the R-p rows, comma-separated")
    parser.add_argument("--mask", default=None, help="a FreezeAsGuard freeze_mask.json to time as well")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on CUDA, 2 elsewhere")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                        help="default: bf16 on CUDA, no elsewhere")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA, off elsewhere")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.size = args.size or ("full" if on_cuda else "tiny")
    args.batch_size = args.batch_size or (4 if on_cuda else 2)
    args.mixed_precision = args.mixed_precision or ("bf16" if on_cuda else "no")
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = on_cuda
    args.ratios = [float(p) for p in args.ratios.split(",") if p.strip()]
    if args.steps < 2 or args.warmup < 0:
        parser.error("--steps must be >= 2 and --warmup >= 0")
    return args


def main(argv=None) -> None:
    import os

    import torch

    args = parse_args(argv)
    rows = run(args)
    cuda = args.device.startswith("cuda")
    where = f"{args.device} ({torch.cuda.get_device_name(args.device)})" if cuda else \
        f"cpu ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f})"
    checkpointing = "on" if args.gradient_checkpointing else "off"
    print(f"SD 1.5 {args.size} size, {where}, batch {args.batch_size}, mixed precision {args.mixed_precision}, "
          f"gradient checkpointing {checkpointing}, median of {args.steps} steps after {args.warmup}, "
          f"torch {torch.__version__}")
    print(table(rows, cuda))


if __name__ == "__main__":
    main()
