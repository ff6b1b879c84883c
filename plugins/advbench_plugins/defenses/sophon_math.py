"""SOPHON's fine-tuning simulation: first-order MAML over the UNet's tensors, as plain functions.

One outer loop of fine-tuning suppression (official ``fast_adapt_multibatch`` with learn2learn's
``MAML(first_order=True)``):

    φ₀ = θ                                                  (the simulated fine-tune restarts from θ)
    for k = 1 … K:  φ_k = φ_{k−1} − η_in ∇ L_diff(φ_{k−1}; support batch k)     (plain SGD, the attacker)
                    q_k = S(φ_k; query batch k)                                  (the suppression loss)
    g = (1/K) Σ_k ∇_φ S(φ_k; query batch k)                                      (first order)

g is what learn2learn's first-order MAML hands to θ: its ``adapt`` takes the support gradient without
``create_graph``, so ∂φ_k/∂θ is the identity and the mean query loss backpropagates to θ as the mean of the
query gradients taken at the iterates φ_1 … φ_K. No second-order term is formed here either. The caller
clips g (official: norm 0.5) and hands it to the outer optimizer, which *descends* S.

The suppression loss S (``QUERY_LOSSES``), both from the official generation code:
- ``dos`` (``generation/denial_service_loss.py``, the paper's denial-of-service loss): MSE between the
  model's output and zero, ``loss(pred_noise_eva, torch.zeros_like(pred_noise_eva))``. Descending it drives
  the fine-tuned model's prediction to 0, so its diffusion loss rises towards E‖target‖²; it is bounded below.
- ``inverse_mse`` (``generation/mean_squared_loss.py``): minus the diffusion loss, ``-loss(pred, noise)``,
  i.e. plain gradient ascent of the fine-tuned model's diffusion loss; unbounded (the official code clips the
  gradient norm to 0.5 and left a clamp commented out "to avoid loss to nan").

The diffusion loss of the query batch (MSE to the true target) is recorded for both, so the two are compared
on one scale.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from advbench.finetune import diffusion_prediction

QUERY_LOSSES = ("dos", "inverse_mse")

Draw = Callable[[torch.Generator], tuple[torch.Tensor, list[str]]]


def predict(model, pixel_values: torch.Tensor, captions: Sequence[str], generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) of the engine's DDPM loss, with its draws in its order (``tests/test_sophon.py``
    checks that their MSE is :func:`advbench.finetune.diffusion_loss`)."""
    return diffusion_prediction(model, pixel_values, captions, generator)


def suppression(kind: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The query objective S that the outer step descends (see the module docstring)."""
    if kind == "dos":
        return F.mse_loss(prediction, torch.zeros_like(prediction))
    if kind == "inverse_mse":
        return -F.mse_loss(prediction, target)
    raise ValueError(f"query loss must be one of {', '.join(QUERY_LOSSES)}, got {kind!r}")


def restart(learner: Sequence[torch.Tensor], theta: Sequence[torch.Tensor]) -> None:
    """φ₀ = θ: copy θ's current values into the learner's tensors (the learner is a clone of θ's UNet)."""
    with torch.no_grad():
        torch._foreach_copy_(list(learner), [t.detach() for t in theta])


class LossScale:
    """Dynamic loss scaling for fp16 autocast on CUDA (halves on overflow, grows after 200 clean steps);
    disabled (plain gradients) otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.scale, self.clean = enabled, 2.0**14, 0

    def grads(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """∂loss/∂params (no graph is kept: first order), or None when fp16 overflowed (skip the step)."""
        params = list(params)
        if not self.enabled:
            return _filled(torch.autograd.grad(loss, params, allow_unused=True), params)
        grads = [g / self.scale for g in _filled(torch.autograd.grad(loss * self.scale, params, allow_unused=True),
                                                 params)]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self.scale, self.clean = self.scale / 2, 0
            return None
        self.clean += 1
        if self.clean % 200 == 0:
            self.scale *= 2
        return grads


def _filled(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Zeros for tensors the loss does not reach (e.g. an unused class embedding)."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@dataclass
class Simulation:
    """One simulated fine-tune: the first-order outer gradient g and per-inner-step losses."""

    grads: list[torch.Tensor] | None  # None when every query gradient was skipped (fp16 overflow)
    query_losses: list[float] = field(default_factory=list)  # diffusion loss (MSE to the target) of each query
    objectives: list[float] = field(default_factory=list)  # the suppression loss S of each query
    support_losses: list[float] = field(default_factory=list)  # the simulated attacker's training losses

    @property
    def query_loss(self) -> float:
        return sum(self.query_losses) / max(len(self.query_losses), 1)

    @property
    def objective(self) -> float:
        return sum(self.objectives) / max(len(self.objectives), 1)


def simulate(learner, params: Sequence[torch.Tensor], draw: Draw, n_query: int, steps: int, lr: float,
             kind: str, generator: torch.Generator, autocast: Callable[[], contextlib.AbstractContextManager] | None
             = None, scale: LossScale | None = None,
             on_step: Callable[[int, object], None] | None = None) -> Simulation:
    """K = ``steps`` inner SGD steps of the diffusion loss on ``learner`` (whose UNet tensors are ``params``,
    already restarted from θ), each followed by the query suppression loss; returns g, the mean query gradient.

    ``draw(generator)`` gives one batch (pixels, captions) per inner step; as in the official code its last
    ``n_query`` images are the query set and the rest the support set the simulated attacker trains on. All
    noise comes from ``generator``. ``on_step(k, learner)`` (a seam for tests) runs after inner step k's
    update, before its query.
    """
    from advbench.finetune import diffusion_loss

    autocast = autocast or contextlib.nullcontext
    scale = scale or LossScale(False)
    params = list(params)
    total: list[torch.Tensor] | None = None
    counted = 0
    result = Simulation(grads=None)
    for k in range(steps):
        pixels, captions = draw(generator)
        cut = len(captions) - n_query
        with autocast():
            loss = diffusion_loss(learner, pixels[:cut], captions[:cut], generator)
        grads = scale.grads(loss, params)
        if grads is not None:
            with torch.no_grad():  # φ_k = φ_{k−1} − η ∇L: the update is not differentiated (first order)
                torch._foreach_add_(params, grads, alpha=-lr)
        result.support_losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(k, learner)
        pixels, captions = pixels[cut:], captions[cut:]
        with autocast():
            prediction, target = predict(learner, pixels, captions, generator)
            objective = suppression(kind, prediction, target)
        grads = scale.grads(objective, params)
        result.query_losses.append(float(F.mse_loss(prediction.detach(), target.detach())))
        result.objectives.append(float(objective.detach()))
        if grads is None:
            continue
        counted += 1
        if total is None:
            total = [g.detach().float().clone() for g in grads]
        else:
            torch._foreach_add_(total, [g.float() for g in grads])
    if total is not None:
        torch._foreach_div_(total, float(counted))
    result.grads = total
    return result
