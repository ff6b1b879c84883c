"""IMMA (Zheng & Yeh, ECCV 2024, arXiv 2311.18815): immunize a model against one adaptation of the illegal classes.

One model, one stream of batches of the publisher's illegal share. Steps alternate by step index: ``inner_steps``
*descent* steps of the adaptation's own loss L_A on the adaptation's parameters φ (LoRA adapters, the whole UNet
or a new token embedding), then ``outer_steps`` *ascent* steps (``backward(-L_A)``) of the same loss on the
immunized set S (the UNet's attention projections) only; each step takes the next batch (Alg. 1: x'_A for line 6
and x'_I for line 8 are different batches). φ lives in the same model, so the outer step already sees θ with φ's
overlapping parameters (Alg. 1 line 7), and φ carries over from one iteration to the next. Both optimizers are
AdamW (β 0.9/0.999, ε 1e-8, weight decay 1e-2), gradients clipped over φ (inner) and over S (outer). The
protected model is the input model with the trained S written in: every other tensor is bit-identical and
no adapter or token is left (the official scripts also save S only). The attacker's share is never seen.

Defaults versus the official code (amberyzheng/IMMA, ``train/defend_*.py``, ``scripts/run_*.sh``; SD 1.4):

| setting | official | here | why |
| --- | --- | --- | --- |
| S | names with to_q/k/v/to_out, no lora: attn1+attn2 | the same (``attention``: 70 world tensors) | paper: attn2 |
| iterations (inner+outer pairs) | 500 (1000 steps) | 100 | world protect ≈ 30 s on one CPU thread |
| batch | 1 | 4 | CPU time; 32 publisher images on the world default |
| inner / outer lr, lora | 1e-4 / 1e-5 | 2e-3 / 2e-4 | ×20, as the world's lora attack (2e-3 vs 1e-4) |
| inner / outer lr, dreambooth | 5e-6 / 2e-5 | 2.5e-4 / 1e-3 | ×50, as the world's dreambooth attack |
| inner / outer lr, dreambooth-lora | never ran (script: 5e-6 / 2e-5) | 2e-3 / 2e-4 | the world's attack; lora's outer |
| inner / outer lr, textual-inversion | 5e-4 / 1e-6 | 5e-3 / 1e-5 | ×10, as the world's textual-inversion attack |
| inner / outer lr, fullft | not in the code | 1e-4 / 2e-4 | the fullft attack; DreamBooth's defense lr ×10 |
| max_grad_norm | 1.0 (TI: no clipping) | the same (``auto``) | |
| LoRA rank / alpha, targets | 4 / 4, every attention's q,k,v,out | the same (peft) | |
| DreamBooth prompt | "a photo of *s purse" | captions with the class name → "*s <noun>" | |
| prior preservation | off (run_db.sh) | off; 16 class images if on (official: 100) | |
| TI token / initializer | "<l*p>" / "purse" (the noun) | "<imma-k>" per class / the noun | |
| step parity | LoRA, TI: index within the epoch (TI: 3 inner + 2 outer) | global index | |
| random flips | LoRA: --random_flip; TI: p = 0.5 | off | the world's classes are not mirror-symmetric |

Official bugs, handled here: ``defend_dreambooth_lora.py`` never ran (``VAMMAAttnProcessor`` is never defined:
NameError at line 875; its S file is also saved under another name than run_db_lora.sh loads); here the
DreamBooth-LoRA variant is implemented. ``--reinitialize_lora`` is a no-op (``initial_state_dict =
lora_layers.state_dict()`` aliases the live tensors, so ``load_state_dict`` copies them onto themselves);
here ``reinitialize_phi`` really restores φ (and the inner optimizer's state) from a cloned seed copy. Details:
docs/defenses/imma.md.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Literal

from advbench.adapters import noun_prompts, rewrite_caption
from advbench.errors import DataError, ParamError
from advbench.interfaces import Context, Defense, Example, ProtectedModel, PublisherData
from advbench.params import check, param

ADAPTATIONS = ("fullft", "dreambooth", "lora", "dreambooth-lora", "textual-inversion")
AUTO_LR = {  # (inner, outer) on the tiny world; see the table above
    "fullft": (1e-4, 2e-4), "dreambooth": (2.5e-4, 1e-3), "lora": (2e-3, 2e-4),
    "dreambooth-lora": (2e-3, 2e-4), "textual-inversion": (5e-3, 1e-5)}
OFFICIAL_LR = {"dreambooth": (5e-6, 2e-5), "lora": (1e-4, 1e-5), "dreambooth-lora": (5e-6, 2e-5),
               "textual-inversion": (5e-4, 1e-6)}
ATTENTION = {"attention": ("attn1", "attn2"), "cross-attention": ("attn2",)}
PRIOR_SAMPLING = {"scheduler": "ddim", "steps": 25, "guidance_scale": 3.0, "batch_size": 16}


def immunized_parameters(unet, immunized: str = "attention") -> dict:
    """S by UNet parameter name: weight and bias of every attention projection (to_q, to_k, to_v, to_out.0)
    of self- and cross-attention (``attention``) or of cross-attention only (``cross-attention``)."""
    from advbench.adapters import attention_projections

    layers = attention_projections(unet, ATTENTION[immunized])
    return {f"{name}.{k}": p for name, layer in layers.items() for k, p in layer.named_parameters(recurse=False)}


@dataclass
class Plan:
    """The simulated adaptation A: its parameters φ, its training images and captions, and its class images."""

    phi: list
    immunized: dict  # S, by UNet parameter name
    examples: list[Example]
    priors: list[Example] | None = None
    after_step: Callable[[], None] | None = None  # textual inversion: restore the other embedding rows
    phrases: dict | None = None


class Session:
    """One IMMA run on a model set up by the engine's :class:`~advbench.finetune.Trainer`: φ, S, two AdamW."""

    def __init__(self, trainer, plan: Plan, inner_lr: float, outer_lr: float, weight_decay: float,
                 clip: float | None, batch_size: int, prior_weight: float, keep_seed: bool = True):
        from advbench.finetune import FinetuneConfig, SeededBatcher, build_optimizer

        self.trainer, self.plan, self.clip, self.prior_weight = trainer, plan, clip, prior_weight
        s_ids = {id(p) for p in plan.immunized.values()}
        self.groups = {"inner": list(plan.phi), "outer": list(plan.immunized.values())}
        self.everything = _unique(self.groups["inner"] + self.groups["outer"])
        self.optimizers = {kind: build_optimizer(self.groups[kind], FinetuneConfig(
            lr=lr, optimizer="adamw", weight_decay=weight_decay)) for kind, lr in (("inner", inner_lr),
                                                                                  ("outer", outer_lr))}
        self._stepper = dict(zip(self.optimizers, trainer.accelerator.prepare(*self.optimizers.values())))
        # φ's seed state (φ minus S: S is what the defense keeps), for reinitialize_phi.
        self.seed_state = [(p, p.detach().clone()) for p in plan.phi if id(p) not in s_ids] if keep_seed else []
        resolution = trainer.model.resolution
        self.instances = SeededBatcher(plan.examples, batch_size, resolution)
        self.priors = SeededBatcher(plan.priors, batch_size, resolution) if plan.priors else None

    def next_batch(self) -> dict[str, Any]:
        """The next batch of the publisher's illegal share (and of class images), from the run's generator."""
        generator = self.trainer.generator
        pixels, captions = self.instances.draw(generator)
        batch = {"pixel_values": pixels, "captions": captions}
        if self.priors is not None:
            batch["class_pixel_values"], batch["class_captions"] = self.priors.draw(generator)
        return batch

    def loss_fn(self, model, batch, step=0):
        """L_A: the DDPM loss of the batch (+ the weighted prior-preservation loss on class images)."""
        from advbench.finetune import diffusion_loss

        loss = diffusion_loss(model, batch["pixel_values"], batch["captions"], batch["generator"])
        if "class_pixel_values" in batch:
            loss = loss + self.prior_weight * diffusion_loss(model, batch["class_pixel_values"],
                                                             batch["class_captions"], batch["generator"])
        return loss

    def loss(self, batch) -> float:
        """L_A of ``batch`` without a step (a test seam; pass ``batch["generator"]`` to fix t and noise)."""
        import torch

        with torch.no_grad():
            return float(self.trainer.loss(dict(batch), self.loss_fn))

    def step(self, kind: str, batch) -> float:
        """One inner (descent on φ) or outer (ascent on S) step on ``batch``; returns L_A before the step."""
        params = self.groups[kind]
        for p in self.everything:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        accelerator = self.trainer.accelerator
        loss = self.trainer.loss(batch, self.loss_fn)
        accelerator.backward(loss if kind == "inner" else -loss)
        if self.clip is not None:
            accelerator.clip_grad_norm_(params, self.clip)
        self._stepper[kind].step()
        for p in self.everything:  # no gradient survives a step (the other group's included)
            p.grad = None
        if self.plan.after_step is not None:
            self.plan.after_step()
        return float(loss.detach())

    def reset_phi(self) -> None:
        """Put φ (minus S) back to its seed state and start the inner optimizer afresh."""
        import torch

        if not self.seed_state:
            raise RuntimeError("this session kept no seed state of phi (keep_seed=False)")
        with torch.no_grad():
            for p, seed in self.seed_state:
                p.copy_(seed)
        self.optimizers["inner"].state.clear()


def _unique(params: list) -> list:
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


class IMMA(Defense):
    """IMMA: ascend the simulated adaptation's loss on the attention projections, alternating with its descent."""

    follows_attack: ClassVar[str] = "adaptation"
    on_step: ClassVar[Callable[[Session, dict], None] | None] = None  # test seam: before and after every step

    @dataclass(frozen=True)
    class Params:
        adaptation: Literal["fullft", "dreambooth", "lora", "dreambooth-lora", "textual-inversion", "matched"] = param(
            "lora", "The adaptation A simulated (paper's main setting: lora); matched: the cell's attack.")
        immunized: Literal["attention", "cross-attention"] = param(
            "attention", "S: every attention projection (official code) or cross-attention only (paper text).")
        iterations: int = param(100, "Outer iterations of inner_steps + outer_steps steps (official: 500).")
        inner_steps: int = param(1, "Descent steps of A on phi per iteration (official: 1).")
        outer_steps: int = param(1, "Ascent steps on S per iteration (official: 1).")
        inner_lr: Literal["auto"] | float = param("auto", "AdamW lr of phi; auto: per adaptation (see docs).")
        outer_lr: Literal["auto"] | float = param("auto", "AdamW lr of S; auto: per adaptation (see docs).")
        batch_size: int = param(4, "Images of the illegal share per step (official: 1).")
        weight_decay: float = param(1e-2, "AdamW weight decay of both optimizers (official: 1e-2).")
        max_grad_norm: Literal["auto", "none"] | float = param(
            "auto", "Clip norm over phi (inner) and S (outer); auto: 1.0, none for textual-inversion (official).")
        lora_rank: int = param(4, "LoRA rank for the LoRA adaptations (official: 4).")
        lora_alpha: float = param(4.0, "LoRA alpha (official: alpha = rank).")
        identifier: str = param("*s", "DreamBooth identifier, followed by the class noun (official: *s).")
        prior_preservation: bool = param(False, "DreamBooth prior preservation (official scripts: off).")
        prior_loss_weight: float = param(1.0, "Weight of the prior-preservation loss (official: 1).")
        num_class_images: int = param(16, "Class images sampled from the input model (official: 100).")
        ti_num_vectors: int = param(1, "Textual inversion: vectors per class token (official: 1).")
        ti_initializer: str = param("", "Textual inversion: initializer text; empty: the class noun, else name.")
        reinitialize_phi: bool = param(False, "Reset phi to its seed state every iteration (ablation; the "
                                              "official --reinitialize_lora is a no-op).")
        gradient_checkpointing: bool = param(False, "Trade compute for memory (useful on real SD).")

        def __post_init__(self):
            for name in ("iterations", "inner_steps", "outer_steps", "batch_size", "lora_rank", "num_class_images",
                         "ti_num_vectors"):
                check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
            for name in ("inner_lr", "outer_lr", "max_grad_norm"):
                value = getattr(self, name)
                check(isinstance(value, str) or value > 0, f"{name} must be positive, got {value}")
            check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
            check(self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}")
            check(self.prior_loss_weight >= 0, f"prior_loss_weight must be >= 0, got {self.prior_loss_weight}")
            check(bool(self.identifier.strip()) and len(self.identifier.split()) == 1,
                  f"identifier must be one non-empty word, got {self.identifier!r}")

    # ------------------------------------------------------------------------------------- settings
    def adaptation(self) -> str:
        if self.params.adaptation == "matched":
            raise ParamError("imma: adaptation=matched is resolved from the cell's attack by the runner; outside a "
                             f"cell name the adaptation ({', '.join(ADAPTATIONS)})")
        return self.params.adaptation

    def settings(self) -> dict[str, Any]:
        """The resolved hyper-parameters (``auto`` values filled in for the adaptation)."""
        p, a = self.params, self.adaptation()
        clip = p.max_grad_norm
        clip = (None if a == "textual-inversion" else 1.0) if clip == "auto" else None if clip == "none" else clip
        return {**asdict(p), "inner_lr": AUTO_LR[a][0] if p.inner_lr == "auto" else p.inner_lr,
                "outer_lr": AUTO_LR[a][1] if p.outer_lr == "auto" else p.outer_lr, "max_grad_norm": clip,
                "official_lr": list(OFFICIAL_LR[a]) if a in OFFICIAL_LR else None}

    # ----------------------------------------------------------------------------------------- plan
    def plan(self, work, publisher: PublisherData, ctx: Context) -> Plan:
        """Set ``work`` up for the adaptation (adapters, tokens) and return what it trains on."""
        p, a = self.params, self.adaptation()
        classes = sorted(c for c in publisher.illegal if publisher.illegal[c])
        if not classes:
            raise DataError("IMMA needs the publisher's share of at least one illegal class, but it is empty")
        immunized = immunized_parameters(work.unet, p.immunized)  # before adapters wrap the layers
        if not immunized:
            raise DataError("IMMA found no attention projections (to_q/to_k/to_v/to_out) in the UNet")
        phrases = {c: c for c in classes}
        if a.startswith("dreambooth"):
            phrases = {c: f"{p.identifier} {publisher.noun(c)}".strip() for c in classes}
        priors = self.class_images(work, publisher, classes, ctx) if a.startswith("dreambooth") else None
        after_step = None
        if a in ("fullft", "dreambooth"):
            phi = list(work.unet.parameters())  # official DreamBooth: the whole UNet, S included
        elif a in ("lora", "dreambooth-lora"):
            from advbench.adapters import UNET_TARGETS, add_lora, lora_targets

            phi = add_lora(work.unet, lora_targets(work.unet, UNET_TARGETS), p.lora_rank, p.lora_alpha, 0.0, ctx.seed)
        else:
            phi, phrases, after_step = self.add_tokens(work, publisher, classes)
        examples = [Example(text=rewrite_caption(e.text, c, phrases[c]), cls=c, image=e.image, path=e.path)
                    for c in classes for e in publisher.illegal[c]]
        return Plan(phi, immunized, examples, priors, after_step, phrases)

    def class_images(self, work, publisher: PublisherData, classes: list[str], ctx: Context):
        """DreamBooth's class images: the input model's own samples of the class prompts (none when off)."""
        p = self.params
        if not p.prior_preservation:
            return None
        from advbench.sampling import SamplingConfig, generate

        prompts = noun_prompts([(e.text, c, publisher.noun(c)) for c in classes for e in publisher.illegal[c]],
                               p.num_class_images)
        images = generate(work, prompts, SamplingConfig(**PRIOR_SAMPLING), ctx)
        return [Example(text=t, cls="__class_prior__", image=im) for t, im in zip(prompts, images)]

    def add_tokens(self, work, publisher: PublisherData, classes: list[str]):
        """Textual inversion: new tokens ``<imma-k>`` (initialised from the noun), only their rows learn."""
        from advbench.adapters import add_token_embeddings

        n = self.params.ti_num_vectors
        tokens = {c: [f"<imma-{k}>"] + [f"<imma-{k}>_{i}" for i in range(1, n)] for k, c in enumerate(classes)}
        new = add_token_embeddings(work, [(tokens[c], self.params.ti_initializer or publisher.noun(c) or c)
                                          for c in classes], "IMMA")
        # as the official script, the other rows are restored after each step: AdamW's decay moves every row
        return [new.table], {c: " ".join(tokens[c]) for c in classes}, new.restore

    # -------------------------------------------------------------------------------------- session
    @contextmanager
    def session(self, work, publisher: PublisherData, ctx: Context):
        """``work`` set up for IMMA (see :class:`Session`); φ, adapters and tokens stay on ``work``."""
        from advbench.finetune import FinetuneConfig, Trainer

        p, s = self.params, self.settings()
        plan = self.plan(work, publisher, ctx)
        cfg = FinetuneConfig(steps=p.iterations * (p.inner_steps + p.outer_steps), batch_size=p.batch_size,
                             lr=s["inner_lr"], optimizer="adamw", weight_decay=p.weight_decay,
                             max_grad_norm=s["max_grad_norm"], mixed_precision=ctx.mixed_precision,
                             gradient_checkpointing=p.gradient_checkpointing)
        trainable = _unique(plan.phi + list(plan.immunized.values()))
        with Trainer(work, cfg, ctx, trainable=trainable, optimize=False) as trainer:
            yield Session(trainer, plan, s["inner_lr"], s["outer_lr"], p.weight_decay, s["max_grad_norm"],
                          p.batch_size, p.prior_loss_weight, keep_seed=p.reinitialize_phi)

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        import torch

        p, settings = self.params, self.settings()
        t0 = time.perf_counter()
        work = model.clone()
        cycle = p.inner_steps + p.outer_steps
        losses: dict[str, list[float]] = {"inner": [], "outer": []}
        with self.session(work, publisher_data, ctx) as session:
            plan = session.plan
            for k in range(p.iterations * cycle):
                iteration, position = divmod(k, cycle)
                if position == 0 and iteration > 0 and p.reinitialize_phi:
                    session.reset_phi()
                kind = "inner" if position < p.inner_steps else "outer"
                batch = session.next_batch()
                record = {"step": k, "iteration": iteration, "kind": kind, "phase": "before", "batch": batch}
                if self.on_step is not None:
                    self.on_step(session, record)
                losses[kind].append(session.step(kind, batch))
                if self.on_step is not None:
                    self.on_step(session, {**record, "phase": "after", "loss": losses[kind][-1]})
                if not math.isfinite(losses[kind][-1]):
                    raise FloatingPointError(f"imma diverged at step {k + 1}; lower inner_lr or outer_lr")
                if position == cycle - 1 and (iteration + 1) % max(1, p.iterations // 5) == 0:
                    ctx.log(f"imma {iteration + 1}/{p.iterations}: inner {losses['inner'][-1]:.4f} "
                            f"outer {losses['outer'][-1]:.4f}")
        names = list(plan.immunized)
        protected = model.clone()
        changes = []
        with torch.no_grad():
            for name in names:
                target = protected.unet.get_parameter(name)
                before = target.detach().clone()
                target.copy_(plan.immunized[name].detach().to(target.device, target.dtype))
                changes.append(float((target - before).norm() / before.norm().clamp_min(1e-30)))
        info = {"defense": "imma", "adaptation": self.adaptation(), "immunized": p.immunized,
                "schedule": {"iterations": p.iterations, "inner_steps": p.inner_steps, "outer_steps": p.outer_steps,
                             "steps": p.iterations * cycle, "reinitialize_phi": p.reinitialize_phi,
                             "order": ["inner"] * p.inner_steps + ["outer"] * p.outer_steps},
                "losses": {f"{kind}_{end}": (values[0] if end == "first" else values[-1])
                           for kind, values in losses.items() for end in ("first", "last")},
                "loss_means": {kind: {"first_quarter": _mean(v[:max(1, len(v) // 4)]),
                                      "last_quarter": _mean(v[-max(1, len(v) // 4):])} for kind, v in losses.items()},
                "immunized_tensors": len(names), "immunized_elements": sum(plan.immunized[n].numel() for n in names),
                "phi_tensors": len(plan.phi), "phi_elements": sum(x.numel() for x in plan.phi),
                "max_relative_change": max(changes), "publisher_images": len(plan.examples),
                "phrases": plan.phrases, "settings": settings, "seconds": round(time.perf_counter() - t0, 3)}
        return ProtectedModel(model=protected, constraints=[], info=info)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)
