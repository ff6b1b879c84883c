"""Dark Miner's pieces as plain functions: the verify score, the embedding draw, the step schedules, the mining
loss and the circumvention loss (the loop that uses them is :mod:`advbench_plugins.defenses.darkminer`).

Notation of the paper (Meng et al., arXiv 2409.17682, §3 and Appendix A): θ the model being erased (here the
input UNet plus LoRA adapters on every ``to_v``), θ′ the frozen original (here the same UNet with the adapters
disabled: only adapters train, so the base weights *are* θ′), c a mined conditioning (an L×D sequence of
text-encoder hidden states, the shape the UNet's cross-attention reads), c₀ the hidden states of the anchor
prompt "a photo", Enc the verifier's image encoder.

- Mining (Eqs. 4–5): L_M(c) = E_{x, t, ε} ‖ε_θ(x_t | c) − target‖², the engine's DDPM loss with c in place of
  the encoded caption, minimised over c with θ frozen.
- Verify (Eq. 6): s(c) = (1/k) Σ_i cos(Enc(x_c,i) − Enc(x_r,i), Enc(x_e,i) − Enc(x_r,i)), x_c,i generated
  from c, x_r,i from c₀ (the same initial noise for both), x_e,i the i-th of the k mined pool images.
- Circumvent (Eqs. 7–8): L_C = α_c ‖ε_θ(x_t | c) − ε_θ′(x_t | c₀)‖² + α_p Σ_{u ∈ {c₀, 0·c, −c}}
  ‖ε_θ(x_t | u) − ε_θ′(x_t | u)‖².

Every ‖·‖² is the squared L2 norm of one image's prediction error (summed over its latent elements), averaged
over the batch: the paper's notation read literally. Not the per-element mean of the diffusers scripts: that
is the same loss divided by the latent size (SD: 4·64·64 = 16384; the world: 12·16·16 = 3072), which would
leave the paper's SGD rate (0.01) and clip norms (10, 100) without effect (measured on the world: gradient
norms ≈ 0.03 and no change of l_c in 100 steps). With Adam (mining) the scale matters only through the clip.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import numpy as np
import torch

from advbench.finetune import diffusion_prediction, noised_latents

EPS = 1e-12


def verify_score(enc_c: np.ndarray, enc_r: np.ndarray, enc_e: np.ndarray) -> float:
    """s(c): the mean over rows i of cos(enc_c[i] − enc_r[i], enc_e[i] − enc_r[i]) (Eq. 6).

    A zero difference (the image generated from c is the anchor's own image) has cosine 0: c showed nothing.
    """
    enc_c, enc_r, enc_e = (np.asarray(a, dtype=np.float64) for a in (enc_c, enc_r, enc_e))
    if not enc_c.shape == enc_r.shape == enc_e.shape or enc_c.ndim != 2 or len(enc_c) == 0:
        raise ValueError(f"verify needs three N x D embeddings of one shape, got {enc_c.shape}, {enc_r.shape}, "
                         f"{enc_e.shape}")
    a, b = enc_c - enc_r, enc_e - enc_r
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > EPS, (a * b).sum(axis=1) / np.maximum(norms, EPS), 0.0)
    return float(cos.mean())


def draw_embedding(n: int, r: float, generator: torch.Generator) -> int:
    """The index of the embedding one circumvention step erases, among ``n`` mined so far (the last is the
    current one): the current one with probability ``r``, else one of the ``n − 1`` earlier ones uniformly.
    Drawn afresh at every step from the run's generator (the paper does not say; per step is the choice here).
    With one embedding there is nothing earlier, and the draw consumes no randomness."""
    if n < 1:
        raise ValueError("no mined embedding to draw from")
    if n == 1:
        return 0
    if float(torch.rand((), generator=generator)) < r:
        return n - 1
    return int(torch.randint(0, n - 1, (), generator=generator))


def step_lr(step: int, steps: int, lr: float, lr_final: float, decay_at: float) -> float:
    """Learning rate of 0-based ``step`` of ``steps``: ``lr`` before ``decay_at`` × steps, ``lr_final`` from there
    (the paper's step schedules: mining 0.1 → 0.01 at 50 %, circumvention 0.01 → 0.001 at 80 %)."""
    return lr if step < round(decay_at * steps) else lr_final


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one sub-draw of a run seeded ``seed`` (e.g. the verification images of class c, loop l)."""
    text = "|".join(["advbench-darkminer", str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def squared_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖² per image (summed over all but the first axis), averaged over the batch."""
    return (a.float() - b.float()).pow(2).flatten(1).sum(1).mean()


def mining_loss(model, pixel_values: torch.Tensor, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L_M: the DDPM loss of the pool images with the conditioning c (L×D) in place of a caption, as a squared
    norm per image (the engine's draws and prediction, :func:`advbench.finetune.diffusion_prediction`)."""
    # One DDPM step per image: noise x at a random t, predict from c, compare with the scheduler's target.
    prediction, target = diffusion_prediction(model, pixel_values, None, generator,
                                              hidden=c.expand(len(pixel_values), -1, -1))
    return squared_norm(prediction, target)


@contextlib.contextmanager
def original(unet) -> Iterator[None]:
    """ε_θ′: ``unet`` with its LoRA adapters disabled (θ′, the frozen original) and no gradient. peft's toggle
    also flips the adapters' ``requires_grad``; the flags are put back as they were."""
    flags = [(p, p.requires_grad) for n, p in unet.named_parameters() if "lora_" in n]
    unet.disable_adapters()
    try:
        with torch.no_grad():
            yield
    finally:
        unet.enable_adapters()
        for p, flag in flags:
            p.requires_grad_(flag)


def circumvent_terms(model, pixel_values: torch.Tensor, c: torch.Tensor, c0: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(l_c, l_p) on one batch of images (Eqs. 7–8), x_t from the engine's forward diffusion.

    l_c = ‖ε_θ(x_t|c) − ε_θ′(x_t|c₀)‖², l_p = Σ_{u ∈ {c₀, 0·c, −c}} ‖ε_θ(x_t|u) − ε_θ′(x_t|u)‖². θ and θ′ run on
    the same four-conditioning batch, so with fresh adapters (B = 0) l_p is exactly 0, not a rounding residue.
    """
    b = len(pixel_values)
    # Forward diffusion of the batch: one x_t, t per image, shared by every conditioning below.
    noisy, timesteps, _ = noised_latents(model, pixel_values, generator)
    conds = torch.cat([u.expand(b, -1, -1) for u in (c, c0, 0 * c, -c)]).to(noisy.device)
    x, t = noisy.repeat(4, 1, 1, 1), timesteps.repeat(4)
    # θ's denoising predictions at x_t under c, c₀, 0·c and −c (differentiated through the adapters).
    ours = model.unet(x, t, conds).sample.float().chunk(4)
    with original(model.unet):
        # θ′'s predictions on the same batch: the targets (c's own is unused; it keeps the batches equal).
        ref = model.unet(x, t, conds).sample.float().chunk(4)
    l_c = squared_norm(ours[0], ref[1])
    l_p = sum(squared_norm(ours[i], ref[i]) for i in (1, 2, 3))
    return l_c, l_p


# ---------------------------------------------------------------------------------------------- records
def quarter_mean(values: list[float], end: int) -> float | None:
    """The mean of the first (``end=0``) or last (``end=-1``) quarter of a curve (at least one value)."""
    if not values:
        return None
    n = max(1, len(values) // 4)
    part = values[:n] if end == 0 else values[-n:]
    return round(sum(part) / n, 6)


def loop_summary(r: dict) -> dict:
    """One loop's facts for the record: s(c), the fixed-draw probes before/after, quarter means of the training
    curves and the share of steps that erased the current embedding."""
    row = {"class": r["class"], "loop": r["loop"], "s": round(r["s"], 6),
           "mining_eval": [round(x, 6) for x in r["mining_eval"]],
           "mining_loss_first": quarter_mean(r["mining"], 0), "mining_loss_last": quarter_mean(r["mining"], -1)}
    circ = r["circumvent"]
    if circ:
        row.update({"l_c_eval": [round(x, 6) for x in r["circumvent_eval"]["l_c"]],
                    "l_p_eval": [round(x, 6) for x in r["circumvent_eval"]["l_p"]],
                    "l_c_first": quarter_mean([x["l_c"] for x in circ], 0),
                    "l_c_last": quarter_mean([x["l_c"] for x in circ], -1),
                    "l_p_last": quarter_mean([x["l_p"] for x in circ], -1), "embeddings": r["embeddings"],
                    "current_share": round(_share(circ, r["embeddings"] - 1), 4)})
    return row


def _share(rows: list[dict], index: int) -> float:
    return sum(x["index"] == index for x in rows) / len(rows)
