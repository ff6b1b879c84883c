"""UCE's closed form and key-token selection, as plain functions (no plugin, no registry).

Notation (Gandikota et al., arXiv 2308.14761, Eq. 7): a cross-attention projection W₀ (out×in) reads key
vectors c (rows of the text encoder's last hidden state). With erase keys c_i and their targets v*_i, preserve
keys c_j, and λ, s_e, s_p > 0,

    W = (λW₀ + s_e Σ_i v*_i c_iᵀ + s_p Σ_j (W₀c_j) c_jᵀ) (λI + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ)⁻¹.

Keys are passed as N×in matrices (one key per row) and targets as N×out matrices.

Which hidden-state rows are keys ("2023": train-scripts/train_erase.py; "2025": trainscripts/uce_sd_erase.py):

- 2023: tokenize [prompt, guide] padded to the tokenizer's max length L; a = mask₀.sum() − 2 and
  b = mask₁.sum() − 2 are the indices of the last word token of each (the mask counts BOS and EOS), f = max(a, b);
  the erase keys are hidden₀[a : L − (f − a)] and the guide keys hidden₁[b : L − (f − b)] (both L − f rows, from
  the last word token to the end, EOS and padding included). A preserve prompt contributes all L rows.
- 2025: one row per prompt, hidden[mask.sum() − 2], for erase, guide and preserve prompts alike (for '' that
  is row 0, BOS).
"""

from __future__ import annotations

VARIANTS = ("2023", "2025")


def closed_form(w0, keys_e, values_e, keys_p, lamb: float, s_e: float, s_p: float):
    """UCE's edited weight (out×in) in W₀'s dtype; the algebra runs in float64 on W₀'s device.

    ``keys_e`` N×in, ``values_e`` N×out (the targets v*), ``keys_p`` M×in (targets W₀c_j); N or M may be 0.
    The normal equations' left factor is written as W₀·A + s_e (V*ᵀ − W₀Cₑᵀ) Cₑ, with A = λI + s_e CₑᵀCₑ +
    s_p CₚᵀCₚ symmetric positive definite, so W = W₀ + s_e (V*ᵀ − W₀Cₑᵀ) Cₑ A⁻¹ (the same W as the equation
    above, without forming W₀A and subtracting it again); A⁻¹ is applied with ``torch.linalg.solve``.
    """
    import torch

    dev = w0.device
    w = w0.detach().to(dev, torch.float64)
    n_in = w.shape[1]
    ke = keys_e.detach().to(dev, torch.float64).reshape(-1, n_in)
    ve = values_e.detach().to(dev, torch.float64).reshape(-1, w.shape[0])
    kp = keys_p.detach().to(dev, torch.float64).reshape(-1, n_in)
    if ke.shape[0] != ve.shape[0]:
        raise ValueError(f"{ke.shape[0]} erase keys but {ve.shape[0]} targets")
    a = lamb * torch.eye(n_in, dtype=torch.float64, device=dev) + s_e * ke.T @ ke + s_p * kp.T @ kp
    residual = s_e * (ve.T - w @ ke.T) @ ke  # out×in: what the erase terms add to λW₀ + s_p W₀CₚᵀCₚ beyond W₀A
    # W = W₀ + R A⁻¹  <=>  (A is symmetric)  Wᵀ = W₀ᵀ + A⁻¹ Rᵀ
    update = torch.linalg.solve(a, residual.T).T
    return (w + update).to(w0.dtype)


def last_word_index(attention_mask_row) -> int:
    """Index of a prompt's last word token: the mask counts BOS and EOS, so mask.sum() − 2 (0 for '', BOS)."""
    return int(attention_mask_row.sum().item()) - 2


def encode(tokenizer, text_encoder, prompts: list[str]):
    """(hidden B×L×D, attention_mask B×L) for ``prompts`` padded to ``tokenizer.model_max_length``."""
    import torch

    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        hidden = text_encoder(tokens.input_ids.to(device)).last_hidden_state
    return hidden.detach(), tokens.attention_mask


def key_slices(tokenizer, text_encoder, prompt: str, guide: str, variant: str = "2023"):
    """(erase keys, guide keys) of one erase prompt and its guide prompt, as two equally long K×D tensors."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    hidden, mask = encode(tokenizer, text_encoder, [prompt, guide])
    a, b = last_word_index(mask[0]), last_word_index(mask[1])
    if variant == "2025":
        return hidden[0, a:a + 1], hidden[1, b:b + 1]
    length, f = hidden.shape[1], max(a, b)
    return hidden[0, a:length - (f - a)], hidden[1, b:length - (f - b)]


def preserve_keys(tokenizer, text_encoder, prompt: str, variant: str = "2023"):
    """Keys of one preserve prompt: all L rows (2023, BOS included) or the last word token's row (2025)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    hidden, mask = encode(tokenizer, text_encoder, [prompt])
    if variant == "2025":
        a = last_word_index(mask[0])
        return hidden[0, a:a + 1]
    return hidden[0]
