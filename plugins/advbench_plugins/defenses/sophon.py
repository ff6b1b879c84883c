"""SOPHON (Deng et al., IEEE S&P 2024, arXiv 2404.12699): non-fine-tunable learning by first-order MAML.

The publisher makes the UNet hard to fine-tune on the illegal classes while keeping it good on the legal ones,
by alternating two phases (official code ``ChiangE/Sophon``, ``generation/denial_service_loss.py`` and
``mean_squared_loss.py``; the math is in :mod:`advbench_plugins.defenses.sophon_math`):

1. *Fine-tuning suppression* (``suppression_steps`` per outer loop): the simulated fine-tune restarts from θ
   (the current protected UNet) in a clone, runs ``inner_steps`` plain-SGD steps of the diffusion loss on
   support batches of the publisher's illegal share, evaluates the suppression loss S on a query batch after
   each step, and the mean of the query gradients taken at the clone's weights (first order, no second-order
   term) is clipped and applied to θ by the outer Adam, which descends S: ``dos`` (default, the paper's
   denial-of-service loss, MSE of the model's output to zero) or ``inverse_mse`` (minus the diffusion loss,
   i.e. plain ascent). Either way the fine-tuned model's diffusion loss on the illegal classes goes up.
2. *Normal training reinforcement* (``legal_steps`` per outer loop): descent of the diffusion loss on batches
   of the legal share (its own Adam), keeping legal quality.

Every UNet tensor changes; the text encoder does not (the official model is an unconditional DDPM: it has
none). Text conditioning through the images' captions is this benchmark's extension of the paper, whose
generation experiments are unconditional (CIFAR-100 → CelebA). The clone is a ``copy.deepcopy`` of the UNet
made once per protect; each simulated fine-tune starts by copying θ's current values into it (φ₀ = θ). The
attacker's share of the data never reaches the defense. No constraint: the protection is in the weights.

Defaults versus the official code (its ``denial_service_loss.py`` run from the README: ``--alpha 0.05
--beta 2 --nl 10 --total 200``, lr 1e-4, bs 200, fast_batches 50; ``mean_squared_loss.py``: ``--alpha 1.0
--beta 5.0 --bs 100 --fast_batches 50 --ml 1 --nl 1``):

| setting | official (dos run; mse run) | here | why |
| --- | --- | --- | --- |
| query loss | dos (``denial_service_loss.py``); ``inverse_mse`` | ``dos`` | the paper's DoS loss; bounded |
| outer loops ``loops`` | 200 (``--total``); 1000 | 12 | protect ≤ 2 min on 2 CPUs |
| suppression steps per loop | 1 (``--ml_loop``) | 1 | |
| legal steps per loop | 10 (``--nl_loop``); 1 | 10 | |
| inner steps K | 50 (``--fast_batches``) | 4 | CPU time |
| support / query images | 180 / 20 (bs 200 split 90/10); 90 / 10 | 6 / 2 | CPU time (one batch split 3:1, not 9:1) |
| legal batch | 200; 100 | 8 | CPU time |
| inner lr (SGD) | 1e-4 (``l2l.MAML(lr=0.0001)``) | 0.01 | FreezeAsGuard's simulated-user rate |
| outer lr (Adam) | 5e-6 (alpha·lr); 1e-4 | 5e-4 | 12 loops, not 200; 1e-3 hurt legal, 2e-3 broke it |
| legal lr | 2e-4 (beta·lr); 5e-4 | 1e-4 | the benchmark attacker's Adam rate |
| legal optimizer | the config's (file not published) | Adam | |
| outer grad clip | 0.5 (L2 norm) | 0.5 | |
| timesteps | t = 1 only (``DDPMTrainer``/``DDPMTester``) | uniform, as the engine | see docs/defenses/sophon.md |

Legal-quality bound (tested): on the publisher's legal images with fixed noise, the protected model's
diffusion loss is at most 1.5 × the input model's (``legal_eval_after`` ≤ 1.5 × ``legal_eval_before``).
With the defaults on the world default cell (portraits, 2 + 2 classes, 16 publisher images each) the ratio was
0.91 while the query loss rose from 0.15 to 0.48, and the protect took ≈ 40 s on one CPU thread.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

from advbench.errors import DataError
from advbench.interfaces import Context, Defense, Example, ProtectedModel, PublisherData
from advbench.params import check, param

LEGAL_BOUND = 1.5  # legal_eval_after <= LEGAL_BOUND * legal_eval_before (docs/defenses/sophon.md)
EVAL_CHUNK = 16


class Sophon(Defense):
    """SOPHON: first-order MAML fine-tuning suppression on the illegal classes, normal training on the legal."""

    @dataclass(frozen=True)
    class Params:
        query_loss: Literal["dos", "inverse_mse"] = param(
            "dos", "Suppression loss on the query batch: dos = MSE of the output to zero (official "
                   "denial_service_loss.py, the paper's DoS), inverse_mse = minus the diffusion loss "
                   "(mean_squared_loss.py).")
        loops: int = param(12, "Outer loops (official: 200 for dos, 1000 for inverse_mse).")
        suppression_steps: int = param(1, "Simulated fine-tunes (outer steps) per loop (official --ml_loop 1).")
        legal_steps: int = param(10, "Legal fine-tuning steps per loop (official --nl_loop: 10 dos, 1 mse).")
        inner_steps: int = param(4, "Inner SGD steps K of each simulated fine-tune (official fast_batches 50).")
        batch_size: int = param(6, "Support images per inner step (official 180 of a batch of 200).")
        query_batch_size: int = param(2, "Query images per inner step (official 20 of a batch of 200).")
        legal_batch_size: int = param(8, "Images per legal step (official 200).")
        inner_lr: float = param(0.01, "Simulated attacker's SGD learning rate (official 1e-4).")
        outer_lr: float = param(5e-4, "Adam learning rate of the suppression step (official 5e-6 dos, 1e-4 mse).")
        legal_lr: float = param(1e-4, "Adam learning rate of the legal steps (official 2e-4 dos, 5e-4 mse).")
        max_grad_norm: float = param(0.5, "L2 clip of the outer gradient (official 0.5).")
        gradient_checkpointing: bool = param(False, "Trade compute for memory (useful on real SD).")

        def __post_init__(self):
            for name in ("loops", "suppression_steps", "inner_steps", "batch_size", "query_batch_size",
                         "legal_batch_size"):
                check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
            check(self.legal_steps >= 0, f"legal_steps must be >= 0, got {self.legal_steps}")
            for name in ("inner_lr", "outer_lr", "legal_lr", "max_grad_norm"):
                value = getattr(self, name)
                check(math.isfinite(value) and value > 0, f"{name} must be positive, got {value}")

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        import torch

        from advbench.finetune import FinetuneConfig, SeededBatcher, Trainer, build_optimizer, diffusion_loss
        from advbench_plugins.defenses import sophon_math

        p = self.params
        illegal = [e for cls in sorted(publisher_data.illegal) for e in publisher_data.illegal[cls]]
        legal = [e for cls in sorted(publisher_data.legal) for e in publisher_data.legal[cls]]
        if not illegal:
            raise DataError("SOPHON needs the publisher's share of at least one illegal class, but it is empty; "
                            "give the domain illegal classes with images")
        start = time.perf_counter()
        work = model.clone()
        setup = FinetuneConfig(mixed_precision=ctx.mixed_precision, gradient_checkpointing=p.gradient_checkpointing)
        # θ is the work copy's UNet: the engine's trainer sets it up (device, precision, every UNet tensor and
        # nothing else differentiated, the seeded generator) but builds no optimizer: the two are built here.
        with Trainer(work, setup, ctx, optimize=False) as trainer:
            theta = trainer.params
            outer = build_optimizer(theta, FinetuneConfig(lr=p.outer_lr, optimizer="adam"))
            natural = build_optimizer(theta, FinetuneConfig(lr=p.legal_lr, optimizer="adam"))
            generator, autocast = trainer.generator, trainer.accelerator.autocast
            scale = sophon_math.LossScale(ctx.mixed_precision == "fp16" and trainer.device.startswith("cuda"))
            learner = self.learner(work)
            phi = list(learner.unet.parameters())
            illegal_batches = SeededBatcher(illegal, p.batch_size + p.query_batch_size, work.resolution)
            legal_batches = SeededBatcher(legal, p.legal_batch_size, work.resolution) if legal else None
            before = self.evaluate(work, illegal, legal, ctx.seed)
            rows = []
            for loop in range(p.loops):
                t0 = time.perf_counter()
                sims, norms = [], []
                for _ in range(p.suppression_steps):
                    sophon_math.restart(phi, theta)  # the simulated fine-tune restarts from θ
                    sim = sophon_math.simulate(learner, phi, illegal_batches.draw, p.query_batch_size,
                                               p.inner_steps, p.inner_lr, p.query_loss, generator, autocast, scale)
                    sims.append(sim)
                    if sim.grads is None:
                        continue
                    for t, g in zip(theta, sim.grads):
                        t.grad = g
                    norms.append(float(torch.nn.utils.clip_grad_norm_(theta, p.max_grad_norm)))
                    outer.step()
                    outer.zero_grad(set_to_none=True)
                legal_losses = []
                for _ in range(p.legal_steps if legal_batches is not None else 0):
                    pixels, captions = legal_batches.draw(generator)
                    with autocast():
                        loss = diffusion_loss(work, pixels, captions, generator)
                    grads = scale.grads(loss, theta)
                    if grads is not None:
                        for t, g in zip(theta, grads):
                            t.grad = g
                        natural.step()
                        natural.zero_grad(set_to_none=True)
                    legal_losses.append(float(loss.detach()))
                row = {"loop": loop + 1, "query_loss": _mean([s.query_loss for s in sims]),
                       "objective": _mean([s.objective for s in sims]),
                       "support_loss": _mean([x for s in sims for x in s.support_losses]),
                       "legal_loss": _mean(legal_losses) if legal_losses else None,
                       "outer_grad_norm": _mean(norms) if norms else None, "seconds": time.perf_counter() - t0}
                if not all(math.isfinite(v) for v in (row["query_loss"], row["objective"], *legal_losses)):
                    raise FloatingPointError(f"sophon diverged at loop {loop + 1} (query loss {row['query_loss']});"
                                             f" lower outer_lr or inner_lr, or use query_loss=dos")
                rows.append(row)
                legal_text = f" legal {row['legal_loss']:.4f}" if legal_losses else ""
                ctx.log(f"sophon loop {loop + 1}/{p.loops}: query {row['query_loss']:.4f} ({p.query_loss} "
                        f"{row['objective']:.4f}){legal_text}")
            del learner, phi
            after = self.evaluate(work, illegal, legal, ctx.seed)
        info = self.info(rows, before, after, len(illegal), len(legal), time.perf_counter() - start)
        return ProtectedModel(model=work, constraints=[], info=info)

    @staticmethod
    def learner(work):
        """The simulated fine-tune's model: ``work`` with a ``copy.deepcopy`` of its UNet (the text encoder,
        tokenizer and scheduler are shared, not copied). Its tensors are overwritten with θ before each use."""
        learner = copy.copy(work)
        learner.unet = copy.deepcopy(work.unet)
        return learner

    @staticmethod
    def evaluate(model, illegal: list[Example], legal: list[Example], seed: int) -> dict[str, float | None]:
        """Diffusion loss of every publisher image of each role, with noise and timesteps fixed by ``seed``
        (the same draws before and after protect), without gradients."""
        import torch

        from advbench.data import examples_to_tensor
        from advbench.finetune import diffusion_loss

        out: dict[str, float | None] = {}
        with torch.no_grad():
            for role, examples in (("illegal", illegal), ("legal", legal)):
                if not examples:
                    out[role] = None
                    continue
                generator = torch.Generator().manual_seed(seed)
                pixels = examples_to_tensor(examples, model.resolution)
                captions = [e.text for e in examples]
                losses = [diffusion_loss(model, pixels[i:i + EVAL_CHUNK], captions[i:i + EVAL_CHUNK], generator,
                                         reduction="none") for i in range(0, len(captions), EVAL_CHUNK)]
                out[role] = float(torch.cat(losses).mean())
        return out

    def info(self, rows: list[dict], before: dict, after: dict, n_illegal: int, n_legal: int, seconds: float
             ) -> dict:
        query = [round(r["query_loss"], 6) for r in rows]
        legal = [round(r["legal_loss"], 6) for r in rows if r["legal_loss"] is not None]
        return {"defense": "sophon", "query_loss": self.params.query_loss, "settings": asdict(self.params),
                "query_loss_first": query[0], "query_loss_last": query[-1], "query_loss_series": query,
                "objective_series": [round(r["objective"], 6) for r in rows],
                "support_loss_series": [round(r["support_loss"], 6) for r in rows],
                "legal_loss_first": legal[0] if legal else None, "legal_loss_last": legal[-1] if legal else None,
                "legal_loss_series": legal,
                "outer_grad_norm_series": [round(r["outer_grad_norm"], 6) if r["outer_grad_norm"] is not None
                                           else None for r in rows],
                "illegal_eval_before": before["illegal"], "illegal_eval_after": after["illegal"],
                "legal_eval_before": before["legal"], "legal_eval_after": after["legal"],
                "legal_bound": LEGAL_BOUND, "publisher_images": {"illegal": n_illegal, "legal": n_legal},
                "clone": "copy.deepcopy of the UNet once; theta copied into it before each simulated fine-tune",
                "seconds": round(seconds, 3), "seconds_per_loop": [round(r["seconds"], 3) for r in rows]}


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)
