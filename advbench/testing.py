"""Tiny random models and datasets for tests: Stable Diffusion's architecture at toy size, built in milliseconds.

``tiny_model`` has SD's block types (cross-attention down/up blocks, a cross-attention mid block), a random
1-layer CLIP text encoder, a real CLIP BPE tokenizer (built offline, see :mod:`advbench.tokenizer`) and a
cosine DDPM schedule; it works in pixel space through a layout (no VAE). ``tiny_dataset`` draws simple
coloured patterns, one pattern family per class, captioned ``"a photo of class_k"``.
"""

from __future__ import annotations

import numpy as np
import torch

from advbench.data import InMemoryDataset
from advbench.interfaces import Example
from advbench.model import Model
from advbench.tokenizer import clip_tokenizer

TINY_RESOLUTION = 32


def tiny_model(seed: int = 0, layout: str = "space_to_depth", resolution: int = TINY_RESOLUTION,
               channels: tuple[int, ...] = (16, 32), text_hidden: int = 32, max_length: int = 16,
               n_merges: int = 4000) -> Model:
    """A random SD-shaped model (UNet ≈ 0.2M parameters at the defaults), deterministic in ``seed``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if layout not in ("space_to_depth", "identity"):
        raise ValueError(f"layout must be 'space_to_depth' or 'identity', got {layout!r}")
    factor = 2 if layout == "space_to_depth" else 1
    layout_spec = {"type": "space_to_depth", "factor": factor} if factor > 1 else {"type": "identity"}
    tokenizer = clip_tokenizer(max_length=max_length, n_merges=n_merges)
    fork_devices: list = []  # seed only this build, leave the global RNG as it was
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // factor,
            in_channels=3 * factor**2,
            out_channels=3 * factor**2,
            block_out_channels=channels,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=text_hidden,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
            num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="epsilon")
    return Model(unet, text_encoder, tokenizer, scheduler, layout=layout_spec, resolution=resolution)


def pattern_image(cls_index: int, rng: np.random.Generator, resolution: int = TINY_RESOLUTION) -> np.ndarray:
    """One uint8 H×W×3 image of class ``cls_index``: a class colour pair, stripe direction and period."""
    hues = np.array([[220, 60, 60], [60, 200, 80], [70, 90, 230], [230, 200, 50], [180, 70, 200], [60, 200, 210]])
    base = hues[cls_index % len(hues)].astype(float)
    other = hues[(cls_index + 3) % len(hues)].astype(float)
    period = 4 + 2 * (cls_index // len(hues) % 3)
    yy, xx = np.mgrid[0:resolution, 0:resolution]
    coord = (xx if cls_index % 2 else yy) + rng.integers(0, period)
    stripes = ((coord // (period // 2)) % 2).astype(float)[..., None]
    image = stripes * base + (1 - stripes) * other
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def tiny_dataset(n_classes: int = 3, n_per_class: int = 8, seed: int = 0,
                 resolution: int = TINY_RESOLUTION) -> InMemoryDataset:
    """Classes ``class_0``… of jittered stripe patterns, captions ``"a photo of class_k"``."""
    rng = np.random.default_rng(seed)
    data = {}
    for k in range(n_classes):
        name = f"class_{k}"
        data[name] = [Example(text=f"a photo of {name}", cls=name, image=pattern_image(k, rng, resolution))
                      for _ in range(n_per_class)]
    return InMemoryDataset(data)
