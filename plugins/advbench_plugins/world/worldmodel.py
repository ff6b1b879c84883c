"""The tiny world's text-to-image model: Stable Diffusion's architecture at 32×32, and its pretraining.

- UNet: ``diffusers.UNet2DConditionModel`` with SD's block types — ``DownBlock2D`` at 16×16, then
  ``CrossAttnDownBlock2D`` ×2, a ``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D`` ×2, ``UpBlock2D`` — so
  every cross-attention has ``attn2.to_k``/``attn2.to_v`` as on SD. No VAE: a space-to-depth layout
  (32×32×3 pixels ↔ 16×16×12 "latents", SD's 8× VAE replaced by a lossless 2× reshuffle). It is ~3× cheaper
  than the pixel layout on a CPU (which the shared 2-core build could not afford); its cost is a faint 2×2
  checkerboard in samples, which the judges are trained to ignore (their augmentation adds one).
- Text: a small ``transformers.CLIPTextModel`` over CLIP's real BPE vocabulary (its first ``n_merges`` merges,
  :mod:`advbench.tokenizer`), trained jointly with the UNet during pretraining, as SD's text path was
  pretrained (a frozen random encoder failed to bind names in the probe).
- Scheduler: ``DDPMScheduler``, 1000 steps, cosine schedule, **v-prediction** (as Stable Diffusion 2.x) with
  ``trailing`` timestep spacing (samplers start at t = 999; Lin et al. 2023). The first worlds used epsilon
  prediction: after 1,500 steps their x0 error at t = 950 was 0.72–0.77 (MSE in [-1, 1] units) whatever the
  prompt, so captions barely steered sampling; a 400-step v-prediction model already reached 0.18–0.26 there,
  with the true caption beating an empty or a wrong one (eps loss weights high-noise steps, where layout and
  colour are decided, almost to zero).

Pretraining draws fresh images from the three domains' *pools* only (anonymous identities, other styles,
clothed figures) with compositional captions; the named benchmark classes never appear.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from advbench_plugins.world.generators import DOMAINS, get_generator, rng_for


@dataclass(frozen=True)
class WorldModelConfig:
    """Architecture of the world model (``small()`` gives a test-sized one)."""

    channels: tuple[int, ...] = (48, 64, 96)
    layers_per_block: int = 1
    text_hidden: int = 128
    text_layers: int = 2
    max_length: int = 40
    n_merges: int = 8000
    norm_groups: int = 16
    space_to_depth: int = 2  # 1: pixel (identity) layout
    prediction_type: str = "v_prediction"  # or "epsilon" (SD 1.x)
    timestep_spacing: str = "trailing"

    @classmethod
    def small(cls) -> WorldModelConfig:
        return cls(channels=(16, 32), text_hidden=32, text_layers=1, max_length=24, n_merges=2000, norm_groups=8)

    @property
    def layout(self) -> dict:
        f = self.space_to_depth
        return {"type": "space_to_depth", "factor": f} if f > 1 else {"type": "identity"}


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining hyper-parameters (the shipped world: ``PretrainConfig()``)."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    prompt_dropout: float = 0.1
    mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # portraits, artworks, explicit
    seed: int = 0


def new_world_model(cfg: WorldModelConfig = WorldModelConfig(), seed: int = 0):
    """A freshly initialised world model (an :class:`advbench.model.Model`), deterministic in ``seed``."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from advbench.model import Model
    from advbench.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(max_length=cfg.max_length, n_merges=cfg.n_merges)
    n = len(cfg.channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32 // cfg.space_to_depth, in_channels=3 * cfg.space_to_depth ** 2,
            out_channels=3 * cfg.space_to_depth ** 2, block_out_channels=cfg.channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.text_hidden,
            attention_head_dim=8, norm_num_groups=cfg.norm_groups)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type=cfg.prediction_type, timestep_spacing=cfg.timestep_spacing)
    return Model(unet, text_encoder, tokenizer, scheduler, layout=cfg.layout, resolution=32)


def pretrain_batches(cfg: PretrainConfig, world_seed: int = 0) -> Callable:
    """A batch function for :func:`advbench.finetune.finetune`: fresh pool images of all three domains."""
    import torch

    gens = [get_generator(d, world_seed) for d in DOMAINS]

    def batches(step: int, generator: torch.Generator) -> dict:
        # Images come from a numpy generator keyed by (seed, step): the run is reproducible and step-addressable.
        rng = rng_for("pretrain", cfg.seed, step)
        counts = rng.multinomial(cfg.batch_size, cfg.mix)
        images, captions = [], []
        for gen, k in zip(gens, counts):
            if k:
                im, cap = gen.pretrain_batch(rng, int(k))
                images.append(im)
                captions += cap
        x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {"pixel_values": x, "captions": captions}

    return batches


def pretrain(model, cfg: PretrainConfig, ctx, log: Callable[[str], None] = print, world_seed: int = 0,
             checkpoint: Callable[[int], None] | None = None, checkpoint_every: int = 200) -> dict:
    """Pretrain ``model`` in place through the one fine-tuning engine (UNet and text encoder jointly).

    ``checkpoint(step)`` is called every ``checkpoint_every`` steps (e.g. to save the model so far).
    """
    from dataclasses import replace

    from advbench.finetune import FinetuneConfig, finetune

    ft = FinetuneConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adamw",
                        weight_decay=1e-4, lr_scheduler="cosine", lr_warmup_steps=cfg.warmup,
                        prompt_dropout=cfg.prompt_dropout, train_text_encoder=True,
                        mixed_precision=ctx.mixed_precision)
    start = time.perf_counter()
    window: list[float] = []

    def report(step: int, loss: float) -> None:
        window.append(loss)
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            log(f"pretrain step {step + 1}/{cfg.steps} loss {np.mean(window):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
            window.clear()
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)

    result = finetune(model, pretrain_batches(cfg, world_seed), ft, replace(ctx, seed=cfg.seed), callback=report)
    losses = result.losses
    return {"config": asdict(cfg), "seconds": round(result.seconds, 1), "steps": len(losses),
            "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
            "seconds_per_step": round(result.seconds_per_step, 3)}
