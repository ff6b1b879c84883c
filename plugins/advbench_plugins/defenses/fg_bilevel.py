"""FreezeAsGuard's bilevel mask learning (arXiv 2405.17472, §3.2–3.3, Algorithm 1), with two weight copies.

The continuous mask over the N UNet tensors is ``m = σ(w / T)``; the simulated model is

    θ(m) = m ⊙ θ_pre + (1 − m) ⊙ θ_ft                                   (Eq. 4)

Only two copies are kept (§3.3): θ(m) itself (the live UNet tensors, so one forward/backward evaluates it) and
``θ_d = θ_pre − θ_ft``, so that θ(m) = θ_ft + m ⊙ θ_d. Neither θ_pre nor θ_ft is stored during learning.

- Lower level (a simulated user fine-tuning θ_ft on illegal + legal data, Eq. 7: L_lower = L(X_ill) + L(X_leg)),
  plain SGD on θ_ft with ``∂L/∂θ_ft = (1 − m) ⊙ ∂L/∂θ(m)`` written in the two copies (Eqs. 9–10):
  ``θ(m) ← θ(m) − η₂ (1 − m)² ∂L/∂θ(m)`` and ``θ_d ← θ_d + η₂ (1 − m) ∂L/∂θ(m)`` (θ_pre is fixed).
- Upper level (the publisher's mask, Eqs. 5–6): ``L_upper = −λ₁ L(X_ill) + λ₂ L(X_leg) + γ (1ᵀm / N − p)²``;
  with ``∂θ(m)/∂m_i = θ_d,i`` the mask gradient is one backprop and a traversal over tensors (Eqs. 8, 12):
  ``∂L/∂w_i = ⟨∂L/∂θ(m)_i, θ_d,i⟩ · m_i (1 − m_i) / T`` (+ the sparsity term's closed-form gradient).
  After the step ``w ← w − η₁ ∂L/∂w``, θ(m) is brought back in line with Eq. 4: ``θ(m) += Δm ⊙ θ_d``.
- Alternation (Algorithm 1): K mask steps, each after L lower-level steps. As in the paper (and its code), the
  upper level treats θ_ft as fixed (first-order: no differentiation through the lower level's trajectory).

All updates are exact in real arithmetic, so θ(m) + (1 − m) ⊙ θ_d stays equal to θ_pre up to float rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from advbench.interfaces import Context, Example


@dataclass
class BilevelConfig:
    """Hyper-parameters of mask learning (see the plugin's Params for the paper's values)."""

    p: float = 0.3
    mask_steps: int = 16  # K
    lower_steps: int = 10  # L
    batch_size: int = 8
    temperature: float = 0.2  # T
    mask_lr: float = 10.0  # η₁, the mask step size
    user_lr: float = 0.01  # η₂, the simulated user's SGD rate
    sparsity_weight: float = 10.0  # γ
    lambda_illegal: float = 0.5  # λ₁
    lambda_legal: float = 0.5  # λ₂
    init_w: float = -0.4  # w ~ U(1.0001·init_w, 0.9999·init_w): small negative, so m starts near 0 (θ(m) ≈ θ_ft)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False


class BilevelState:
    """The two weight copies and the mask logits: θ(m) (the UNet's own tensors), θ_d and w."""

    def __init__(self, unet: torch.nn.Module, pretrained: dict[str, torch.Tensor],
                 finetuned: dict[str, torch.Tensor], w: torch.Tensor, temperature: float):
        self.names = [n for n, _ in unet.named_parameters()]
        self.params = [p for _, p in unet.named_parameters()]
        self.temperature = temperature
        self.w = w.detach().to(torch.float32).cpu().clone()
        if self.w.shape != (len(self.names),):
            raise ValueError(f"w must have one entry per UNet tensor ({len(self.names)}), got {tuple(self.w.shape)}")
        m = self.mask().tolist()
        self.diff: list[torch.Tensor] = []
        with torch.no_grad():
            for name, param, m_i in zip(self.names, self.params, m):
                pre = pretrained[name].to(param.device, torch.float32)
                ft = finetuned[name].to(param.device, torch.float32)
                d = pre - ft  # θ_d = θ_pre − θ_ft
                param.copy_(ft + m_i * d)  # Eq. 4: θ(m) = θ_ft + m ⊙ θ_d
                self.diff.append(d)

    def mask(self) -> torch.Tensor:
        """The continuous mask m = σ(w / T), one value per tensor (CPU, float32)."""
        return torch.sigmoid(self.w / self.temperature)

    # ---------------------------------------------------------------------------------- read-outs
    def implied_pretrained(self) -> list[torch.Tensor]:
        """θ_pre = θ(m) + (1 − m) ⊙ θ_d: constant through learning (a check of the bookkeeping)."""
        m = self.mask().tolist()
        return [p.detach() + (1 - m_i) * d for p, d, m_i in zip(self.params, self.diff, m)]

    def implied_finetuned(self) -> list[torch.Tensor]:
        """θ_ft = θ(m) − m ⊙ θ_d: the simulated user's current weights."""
        m = self.mask().tolist()
        return [p.detach() - m_i * d for p, d, m_i in zip(self.params, self.diff, m)]

    # ------------------------------------------------------------------------------------- updates
    def mask_gradient(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 12: ∂L/∂w_i = ⟨∂L/∂θ(m)_i, θ_d,i⟩ · m_i (1 − m_i) / T, from one backprop's gradients."""
        m = self.mask()
        inner = torch.stack([torch.sum(g.float() * d) for g, d in zip(grads, self.diff)]).cpu()  # one sync
        return inner * m * (1 - m) / self.temperature

    def sparsity_gradient(self, p: float, weight: float) -> torch.Tensor:
        """Gradient of γ (1ᵀm / N − p)² (Eq. 6) with respect to w, in closed form."""
        m = self.mask()
        return weight * 2.0 * (m.mean() - p) / m.numel() * m * (1 - m) / self.temperature

    def set_w(self, new_w: torch.Tensor) -> None:
        """Move the mask and keep Eq. 4: θ(m) ← θ(m) + (m_new − m_old) ⊙ θ_d."""
        delta = (torch.sigmoid(new_w / self.temperature) - self.mask()).tolist()
        with torch.no_grad():
            for param, d, dm in zip(self.params, self.diff, delta):
                param.add_(d, alpha=dm)
        self.w = new_w.detach().to(torch.float32).cpu().clone()

    def lower_update(self, grads: list[torch.Tensor], lr: float) -> None:
        """Eqs. 9–10: one SGD step of θ_ft, written into θ(m) and θ_d (θ_pre unchanged).

        ``grads`` (∂L/∂θ(m), owned by the caller) are scaled in place: no extra weight copy is made.
        """
        keep = [1.0 - m_i for m_i in self.mask().tolist()]
        with torch.no_grad():
            torch._foreach_mul_(grads, [lr * k for k in keep])
            torch._foreach_add_(self.diff, grads)  # θ_d ← θ_d + η₂ (1 − m) ∂L/∂θ(m)
            torch._foreach_mul_(grads, keep)
            torch._foreach_sub_(self.params, grads)  # θ(m) ← θ(m) − η₂ (1 − m)² ∂L/∂θ(m)


def initial_w(n: int, init_w: float, seed: int) -> torch.Tensor:
    """Small random negative logits (the paper's initialisation: m ≈ 0, i.e. θ(m) ≈ θ_ft, nothing frozen)."""
    generator = torch.Generator().manual_seed(seed)
    return init_w * (0.9999 + 0.0002 * torch.rand(n, generator=generator))


class RoleBatches:
    """Per-step batches with both roles: half illegal, half legal images, from seeded epoch permutations.

    One :class:`advbench.finetune.SeededBatcher` per role (batch size: that role's share), drawn illegal first,
    then legal, from the one generator; ``state_dict()`` / ``load_state_dict()`` carry both roles' queues.
    """

    def __init__(self, illegal: list[Example], legal: list[Example], batch_size: int, resolution: int):
        from advbench.finetune import SeededBatcher

        sizes = {"illegal": batch_size - batch_size // 2 if legal else batch_size, "legal": batch_size // 2}
        self.batchers = {role: SeededBatcher(examples, sizes[role], resolution)
                         for role, examples in (("illegal", illegal), ("legal", legal))
                         if examples and sizes[role] > 0}

    def draw(self, generator: torch.Generator) -> dict[str, tuple[torch.Tensor, list[str]]]:
        return {role: batcher.draw(generator) for role, batcher in self.batchers.items()}

    def state_dict(self) -> dict[str, dict]:
        return {role: batcher.state_dict() for role, batcher in self.batchers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        if set(state) != set(self.batchers):
            raise ValueError(f"batch state has roles {sorted(state)}, these batches {sorted(self.batchers)}")
        for role, batcher in self.batchers.items():
            batcher.load_state_dict(state[role])


@dataclass
class MaskResult:
    """What mask learning produced: final logits and mask (by tensor name) and the per-mask-step curves."""

    names: list[str]
    w: list[float]
    mask: list[float]
    curves: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    lower_step_seconds: list[float] = field(default_factory=list)
    upper_step_seconds: list[float] = field(default_factory=list)
    lower_step_cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads)
    upper_step_cpu: list[float] = field(default_factory=list)


class _LossScale:
    """Dynamic loss scaling for fp16 autocast on CUDA (halves on overflow, grows after 200 clean steps)."""

    def __init__(self, enabled: bool):
        self.enabled, self.scale, self.clean = enabled, 2.0**14, 0

    def grads(self, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if not self.enabled:
            return list(torch.autograd.grad(loss, params))
        grads = [g / self.scale for g in torch.autograd.grad(loss * self.scale, params)]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self.scale, self.clean = self.scale / 2, 0
            return None  # skip this step, as a GradScaler would
        self.clean += 1
        if self.clean % 200 == 0:
            self.scale *= 2
        return grads


def per_example_loss(model, pixel_values: torch.Tensor, captions: list[str], generator: torch.Generator
                     ) -> torch.Tensor:
    """The engine's DDPM loss (:func:`advbench.finetune.diffusion_loss`, same draws in the same order), per image.

    Both roles go through one forward pass; their means are then taken separately (two half-batch passes cost
    ~15 % more on a CPU). ``tests/test_freezeasguard.py`` checks that the mean equals the engine's loss.
    """
    from advbench.finetune import diffusion_loss

    return diffusion_loss(model, pixel_values, captions, generator, reduction="none")


def role_losses(model, batch: dict[str, tuple[torch.Tensor, list[str]]], generator: torch.Generator
                ) -> dict[str, torch.Tensor]:
    """{"illegal": L(X_ill), "legal": L(X_leg)}: each role's mean DDPM loss, from one forward pass."""
    roles = list(batch)
    pixels = torch.cat([batch[r][0] for r in roles])
    captions = [c for r in roles for c in batch[r][1]]
    losses = per_example_loss(model, pixels, captions, generator)
    out, start = {}, 0
    for role in roles:
        n = len(batch[role][1])
        out[role] = losses[start:start + n].mean()
        start += n
    return out


def learn_mask(work, state: BilevelState, batches: RoleBatches, cfg: BilevelConfig, ctx: Context,
               accelerator, on_step: Callable[[dict[str, float]], None] | None = None) -> MaskResult:
    """Algorithm 1: ``cfg.mask_steps`` rounds of ``cfg.lower_steps`` lower-level steps and one mask step.

    ``work`` is the model whose UNet tensors are θ(m) (``state.params``), already on the accelerator's device.
    """
    generator = torch.Generator().manual_seed(ctx.seed)
    scaler = _LossScale(accelerator.mixed_precision == "fp16" and accelerator.device.type == "cuda")
    zero = torch.zeros((), device=accelerator.device)
    result = MaskResult(names=state.names, w=[], mask=[])
    start = time.perf_counter()
    for k in range(cfg.mask_steps):
        lower_losses = []
        for _ in range(cfg.lower_steps):
            t0, c0 = time.perf_counter(), time.process_time()
            with accelerator.autocast():
                losses = role_losses(work, batches.draw(generator), generator)
                # Eq. 7: the simulated user fine-tunes on illegal and legal data alike.
                lower = losses.get("illegal", zero) + losses.get("legal", zero)
            grads = scaler.grads(lower, state.params)
            if grads is not None:
                state.lower_update(grads, cfg.user_lr)
            lower_losses.append(float(lower.detach()))
            _sync(accelerator)
            result.lower_step_seconds.append(time.perf_counter() - t0)
            result.lower_step_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        with accelerator.autocast():
            losses = role_losses(work, batches.draw(generator), generator)
            # Eq. 5: the mask should make illegal adaptation fail (−λ₁) and legal adaptation succeed (+λ₂).
            upper = -cfg.lambda_illegal * losses.get("illegal", zero) + cfg.lambda_legal * losses.get("legal", zero)
        grads = scaler.grads(upper, state.params)
        if grads is not None:
            grad_w = state.mask_gradient(grads) + state.sparsity_gradient(cfg.p, cfg.sparsity_weight)
            state.set_w(state.w - cfg.mask_lr * grad_w)
        _sync(accelerator)
        result.upper_step_seconds.append(time.perf_counter() - t0)
        result.upper_step_cpu.append(time.process_time() - c0)
        m = state.mask()
        sparsity = float((m.mean() - cfg.p) ** 2)
        row = {"mask_step": k + 1, "lower_loss": sum(lower_losses) / max(len(lower_losses), 1),
               "illegal_loss": float(losses.get("illegal", zero).detach()),
               "legal_loss": float(losses.get("legal", zero).detach()),
               "upper_loss": float(upper.detach()) + cfg.sparsity_weight * sparsity, "sparsity": sparsity,
               "soft_ratio": float(m.mean()), "hard_ratio": float((m > 0.5).float().mean()),
               "skipped": grads is None}
        if not all(math.isfinite(v) for v in (row["lower_loss"], row["upper_loss"])):
            raise FloatingPointError(f"mask learning diverged at mask step {k + 1} (loss {row['lower_loss']}); "
                                     f"lower user_lr or mask_lr")
        result.curves.append(row)
        if on_step is not None:
            on_step(row)
    result.seconds = time.perf_counter() - start
    result.w = state.w.tolist()
    result.mask = state.mask().tolist()
    return result


def _sync(accelerator) -> None:
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)
