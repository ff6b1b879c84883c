"""Dark Miner (Meng et al., arXiv 2409.17682): erase a concept by mining the embeddings that still draw it.

The first public implementation (the authors published no code). For each illegal class in turn, the loop of
§3 and Appendix A runs until the verifier finds nothing left or the loop cap is reached:

1. **Mine** (Eqs. 4–5): draw k images of the class's pool, and with the model and its adapters frozen optimise
   a conditioning c (an L×D sequence of text-encoder hidden states) to minimise their DDPM loss L_M.
2. **Verify** (Eq. 6): generate k images from c and k from c₀ = "a photo" (the same initial noise pairwise) and
   score s(c) = mean cos(Enc(x_c) − Enc(x_r), Enc(x_e) − Enc(x_r)) with the domain's defense encoder (never a
   judge that scores the benchmark). s(c) ≤ τ: c no longer draws the class, stop. Else:
3. **Circumvent** (Eqs. 7–8): train LoRA adapters (rank 8) on every ``to_v`` of self- and cross-attention with
   SGD on L_C = α_c‖ε_θ(x_t|c) − ε_θ′(x_t|c₀)‖² + α_p Σ_{u∈{c₀, 0·c, −c}} ‖ε_θ(x_t|u) − ε_θ′(x_t|u)‖²;
   each step erases the current embedding with probability r, else a random earlier one.

θ′ is the frozen original: the same UNet with the adapters disabled (peft's toggle; only adapters train, so the
base weights stay θ′ exactly and no second UNet is held in memory). The protected model is the input model with
the adapters merged into the ``to_v`` weights; every other tensor is bit-identical. The attacker's share is never
seen; the pool is the publisher's illegal share (``pool=publisher``) or the input model's own images of "a
{concept} photo" (``pool=generated``, the paper's). The math is in :mod:`.darkminer_math`.

| setting | paper | here (tiny world) | why |
| --- | --- | --- | --- |
| adapters | LoRA rank 8 on every attention's to_v | the same (14 modules on the world UNet) | |
| LoRA alpha | not given | 8 (= rank, scale 1) | diffusers' and IMMA's convention |
| c | "embedding length 32" | L × D hidden states (SD 77 × 768; world 40 × 128) | what the UNet reads |
| c's init | not given | c₀'s hidden states (``init=anchor``) | a neutral start, no class word |
| ‖·‖² | not given | squared L2 norm per image, batch mean | clip norms 10/100 fit it |
| mining epochs / batch | 1000 / 3 | 100 / 3 (k = 3) | CPU time |
| mining optimiser | not given (lr 0.1 → 0.01 at 500, clip 10) | Adam, lr 0.1 → 0.01 at 50 %, clip 10 | as TI |
| τ | 0.2 | 0.2 | |
| verify sampling | not given (SD: 50 steps, guidance 7.5) | DDIM 25 steps, guidance 3 | the world's evaluation |
| circumvent epochs / batch | 1000 / 1 | 100 / 1 | CPU time |
| circumvent optimiser | SGD, lr 0.01 → 0.001 at 80 %, clip 100 | the same | |
| α_c, α_p, r | 1, 0.5, 0.7 | the same; r drawn per step | |
| x for l_c, l_p | not given | the pool of the embedding's class, noised at uniform t | where the concept lives |
| loops | until s ≤ τ | until s ≤ τ or 2 loops per class | CPU time (protect ≤ 2 min) |
| concepts | one per run | each illegal class in turn, one adapter set | |
| pool | 200 images of "a {concept} photo" | the publisher's illegal share | the base cannot draw unseen classes |
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from advbench.errors import DataError
from advbench.interfaces import Context, Defense, Example, ProtectedModel, PublisherData
from advbench.params import check, param

TARGETS = ("attn1", "attn2")  # every attention module's value projection
EMBEDDINGS_FILE, CURVES_FILE = "darkminer_embeddings.safetensors", "darkminer_curves.json"
EVAL_REPEATS = 2  # the k mined images x 2 noise draws: the fixed-draw probe of L_M, l_c and l_p per loop


@dataclass
class Pool:
    """One class's image pool: its images as the engine's tensor, captions, and a seeded batcher for l_c."""

    cls: str
    examples: list[Example]
    batcher: Any  # advbench.finetune.SeededBatcher

    @property
    def pixels(self):
        return self.batcher.pixels


class Session:
    """One Dark Miner run on ``work`` set up by the engine's :class:`~advbench.finetune.Trainer` (adapters trainable,
    no optimizer): the mined conditioning c with its Adam, the adapters with their SGD, c₀ and the pools."""

    def __init__(self, defense: DarkMiner, trainer, adapters: list, pools: dict[str, Pool], encoder, ctx: Context,
                 names: list[str]):
        import torch

        from advbench.finetune import FinetuneConfig, build_optimizer

        p = defense.params
        self.p, self.trainer, self.adapters, self.pools, self.encoder = p, trainer, adapters, pools, encoder
        self.ctx = ctx
        self.names = names  # the to_v modules that carry an adapter
        self.model, self.generator, self.accelerator = trainer.model, trainer.generator, trainer.accelerator
        device = trainer.device
        with torch.no_grad():
            self.c0 = self.model.encode_prompts([p.anchor]).detach().to(device)  # c₀, 1×L×D
        self.c = torch.nn.Parameter(self.c0.clone(), requires_grad=False)  # the mined conditioning, reused per loop
        self.mine_optimizer = build_optimizer([self.c], FinetuneConfig(lr=p.mine_lr, optimizer="adam"))
        self.optimizer = build_optimizer(list(adapters), FinetuneConfig(lr=p.lr, optimizer="sgd"))
        self._mine_step, self._step = self.accelerator.prepare(self.mine_optimizer, self.optimizer)

    # ------------------------------------------------------------------------------------------ mine
    def sample(self, cls: str):
        """k images of ``cls``'s pool (without replacement, from the run's generator): the mining batch."""
        import torch

        pool = self.pools[cls]
        idx = torch.randperm(len(pool.examples), generator=self.generator)[:self.p.k]
        return pool.pixels[idx]

    def init(self, cls: str):
        """c's starting point: c₀ (``init=anchor``) or the hidden states of the pool's first caption."""
        import torch

        if self.p.init == "anchor":
            return self.c0.clone()
        with torch.no_grad():
            return self.model.encode_prompts([self.pools[cls].examples[0].text]).detach().to(self.c0.device)

    def mining_loss(self, c, pixels, generator) -> float:
        """L_M of ``pixels`` under ``c`` without a step (pass a fresh seeded generator to fix t and the noise)."""
        import torch

        from advbench_plugins.defenses.darkminer_math import mining_loss

        with torch.no_grad(), self.accelerator.autocast():
            return float(mining_loss(self.model, pixels, c.to(self.c0.device), generator))

    def mine(self, pixels, init) -> tuple[Any, list[float]]:
        """Optimise c from ``init`` on ``pixels`` with every model tensor frozen; returns (c, L_M per step)."""
        import torch

        from advbench_plugins.defenses.darkminer_math import mining_loss, step_lr

        p = self.p
        with torch.no_grad():
            self.c.copy_(init)
        self.mine_optimizer.state.clear()  # a fresh Adam for each mined embedding
        for a in self.adapters:
            a.requires_grad_(False)
        self.c.requires_grad_(True)
        losses = []
        try:
            for step in range(p.mine_steps):
                for group in self.mine_optimizer.param_groups:
                    group["lr"] = step_lr(step, p.mine_steps, p.mine_lr, p.mine_lr_final, p.mine_decay_at)
                with self.accelerator.autocast():
                    loss = mining_loss(self.model, pixels, self.c, self.generator)
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_([self.c], p.mine_max_grad_norm)
                self._mine_step.step()
                self.c.grad = None
                losses.append(float(loss.detach()))
        finally:
            self.c.requires_grad_(False)
            for a in self.adapters:
                a.requires_grad_(True)
        return self.c.detach().clone(), losses

    # ---------------------------------------------------------------------------------------- verify
    def verify(self, c, pixels, cls: str, loop: int) -> dict[str, Any]:
        """s(c) (Eq. 6) on the k mined images: k images from c and k from c₀, each pair from one initial noise."""
        import numpy as np

        from advbench.sampling import SamplingConfig, generate, to_uint8
        from advbench_plugins.defenses.darkminer_math import derived_seed, verify_score

        k = len(pixels)
        cfg = SamplingConfig(scheduler="ddim", steps=self.p.sample_steps, guidance_scale=self.p.guidance_scale,
                             batch_size=16)
        ctx = replace(self.ctx, seed=derived_seed(self.ctx.seed, "verify", cls, loop), progress=False,
                      device=self.trainer.device)
        unet, mode = self.model.unet, self.model.unet.training
        unet.eval()
        try:
            x_c = generate(self.model, c.expand(k, -1, -1).detach(), cfg, ctx)  # image i: seed (ctx.seed, i)
            x_r = generate(self.model, self.c0.expand(k, -1, -1), cfg, ctx)  # the same seeds: pairwise noise
        finally:
            unet.train(mode)
        x_e = to_uint8(pixels)
        enc = np.asarray(self.encoder.encode(np.concatenate([x_c, x_r, x_e])), dtype=np.float32)
        s = verify_score(enc[:k], enc[k:2 * k], enc[2 * k:])
        return {"s": s, "x_c": x_c, "x_r": x_r, "x_e": x_e}

    # ------------------------------------------------------------------------------------- circumvent
    def circumvent_losses(self, c, pixels, generator) -> tuple[float, float]:
        """(l_c, l_p) of ``pixels`` without a step (a fresh seeded generator fixes t and the noise)."""
        import torch

        from advbench_plugins.defenses.darkminer_math import circumvent_terms

        with torch.no_grad(), self.accelerator.autocast():
            l_c, l_p = circumvent_terms(self.model, pixels, c.to(self.c0.device), self.c0, generator)
        return float(l_c), float(l_p)

    def circumvent(self, embeddings: list[tuple[str, Any]]) -> list[dict[str, float]]:
        """One circumvention stage: ``circumvent_steps`` SGD steps of L_C on the adapters; the last of
        ``embeddings`` is the current one. Returns one row per step (loss terms, drawn index, rate, norms)."""
        import torch

        from advbench_plugins.defenses.darkminer_math import circumvent_terms, draw_embedding, step_lr

        p, rows = self.p, []
        for step in range(p.circumvent_steps):
            lr = step_lr(step, p.circumvent_steps, p.lr, p.lr_final, p.decay_at)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            index = draw_embedding(len(embeddings), p.r, self.generator)
            cls, c = embeddings[index]
            pixels, _ = self.pools[cls].batcher.draw(self.generator)
            with self.accelerator.autocast():
                l_c, l_p = circumvent_terms(self.model, pixels, c, self.c0, self.generator)
                loss = p.alpha_c * l_c + p.alpha_p * l_p
            self.accelerator.backward(loss)
            norm = float(self.accelerator.clip_grad_norm_(self.adapters, p.max_grad_norm))
            clipped = float(torch.linalg.vector_norm(torch.stack([a.grad.norm() for a in self.adapters
                                                                   if a.grad is not None])))
            self._step.step()
            self.optimizer.zero_grad(set_to_none=True)
            rows.append({"loss": float(loss.detach()), "l_c": float(l_c.detach()), "l_p": float(l_p.detach()),
                         "index": index, "lr": lr, "grad_norm": norm, "clipped_norm": clipped})
            if not math.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"darkminer circumvention diverged at step {step + 1}; lower lr")
        return rows


class DarkMiner(Defense):
    """Dark Miner: mine embeddings that still draw an illegal class, verify them, circumvent them (LoRA on to_v)."""

    uses_encoder = True

    @dataclass(frozen=True)
    class Params:
        loops: int = param(2, "Loop cap per illegal class (paper: until s <= tau).")
        k: int = param(3, "Pool images per mining batch and per verification (paper: 3).")
        tau: float = param(0.2, "Stop when the verify score s(c) <= tau (paper: 0.2).")
        pool: Literal["publisher", "generated"] = param(
            "publisher", "Image pool: the publisher's illegal share, or the input model's images of pool_prompt "
                         "(paper).")
        pool_prompt: str = param("a {concept} photo", "Prompt of pool=generated; {concept} is the class name.")
        pool_size: int = param(16, "Images per class with pool=generated (paper: 200).")
        anchor: str = param("a photo", "The anchor prompt c0 (paper: 'a photo').")
        init: Literal["anchor", "caption"] = param(
            "anchor", "c's start: the anchor's hidden states, or the pool's first caption's (paper: not given).")
        mine_steps: int = param(100, "Mining steps per loop, batch k (paper: 1000 epochs).")
        mine_lr: float = param(0.1, "Adam lr of the mining (paper: 0.1).")
        mine_lr_final: float = param(0.01, "Mining lr after mine_decay_at (paper: 0.01).")
        mine_decay_at: float = param(0.5, "Fraction of mine_steps where the lr drops (paper: 500 of 1000).")
        mine_max_grad_norm: float = param(10.0, "Gradient clip norm of the mining (paper: 10).")
        circumvent_steps: int = param(100, "SGD steps per circumvention (paper: 1000 epochs).")
        batch_size: int = param(1, "Pool images per circumvention step (paper: 1).")
        lr: float = param(0.01, "SGD lr of the adapters (paper: 0.01).")
        lr_final: float = param(0.001, "Adapter lr after decay_at (paper: 0.001).")
        decay_at: float = param(0.8, "Fraction of circumvent_steps where the lr drops (paper: 80 %).")
        max_grad_norm: float = param(100.0, "Gradient clip norm of the adapters (paper: 100).")
        alpha_c: float = param(1.0, "Weight of the circumvention term l_c (paper: 1).")
        alpha_p: float = param(0.5, "Weight of the preservation term l_p (paper: 0.5).")
        r: float = param(0.7, "Probability of the current embedding per step, else an earlier one (paper: 0.7).")
        lora_rank: int = param(8, "LoRA rank on every to_v (paper: 8).")
        lora_alpha: float = param(8.0, "LoRA alpha (paper: not given; alpha = rank).")
        sample_steps: int = param(25, "DDIM steps of the verification images (world evaluation: 25).")
        guidance_scale: float = param(3.0, "Guidance of the verification images (world evaluation: 3).")
        gradient_checkpointing: bool = param(False, "Trade compute for memory (useful on real SD).")

        def __post_init__(self):
            for name in ("loops", "k", "pool_size", "mine_steps", "circumvent_steps", "batch_size", "lora_rank",
                         "sample_steps"):
                check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
            for name in ("mine_lr", "mine_lr_final", "mine_max_grad_norm", "lr", "lr_final", "max_grad_norm",
                         "lora_alpha"):
                value = getattr(self, name)
                check(math.isfinite(value) and value > 0, f"{name} must be positive, got {value}")
            for name in ("mine_decay_at", "decay_at", "r"):
                value = getattr(self, name)
                check(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
            check(self.alpha_c >= 0 and self.alpha_p >= 0 and self.alpha_c + self.alpha_p > 0,
                  f"alpha_c and alpha_p must be >= 0 and not both 0, got {self.alpha_c}, {self.alpha_p}")
            check(-1 <= self.tau <= 1, f"tau must be in [-1, 1] (a mean cosine), got {self.tau}")
            check(self.guidance_scale >= 0, f"guidance_scale must be >= 0, got {self.guidance_scale}")
            check("{concept}" in self.pool_prompt, f"pool_prompt must contain {{concept}}, got {self.pool_prompt!r}")

    # ------------------------------------------------------------------------------------------ pools
    def pools(self, work, publisher: PublisherData, classes: list[str], ctx: Context) -> dict[str, Pool]:
        """Each illegal class's pool: its publisher share, or ``pool_size`` images the input model draws of
        ``pool_prompt`` (made before any adapter exists, so they are the original's)."""
        from advbench.finetune import SeededBatcher

        p = self.params
        out = {}
        for cls in classes:
            if p.pool == "publisher":
                examples = list(publisher.illegal[cls])
            else:
                from advbench.sampling import SamplingConfig, generate
                from advbench_plugins.defenses.darkminer_math import derived_seed

                prompt = p.pool_prompt.replace("{concept}", cls)
                cfg = SamplingConfig(scheduler="ddim", steps=p.sample_steps, guidance_scale=p.guidance_scale,
                                     images_per_prompt=p.pool_size, batch_size=16)
                images = generate(work, [prompt], cfg, replace(ctx, seed=derived_seed(ctx.seed, "pool", cls),
                                                               progress=False))
                examples = [Example(text=prompt, cls=cls, image=im) for im in images]
            if len(examples) < p.k:
                raise DataError(f"darkminer: the pool of illegal class {cls!r} has {len(examples)} images, fewer "
                                f"than k={p.k}; lower k or give the class more publisher images")
            out[cls] = Pool(cls, examples, SeededBatcher(examples, p.batch_size, work.resolution))
        return out

    @contextmanager
    def session(self, work, publisher_data: PublisherData, ctx: Context):
        """``work`` set up for Dark Miner (see :class:`Session`): pools built, LoRA adapters (rank ``lora_rank``) on
        every attn1/attn2 ``to_v``; the adapters stay on ``work``."""
        from advbench.adapters import add_lora, attention_projections
        from advbench.finetune import FinetuneConfig, Trainer

        p = self.params
        encoder = publisher_data.encoder
        if encoder is None:
            raise DataError("darkminer: the domain supplies no defense encoder (Domain.defense_encoder) for the "
                            "verifier; use a domain that has one")
        classes = sorted(c for c in publisher_data.illegal if publisher_data.illegal[c])
        if not classes:
            raise DataError("darkminer needs the publisher's share of at least one illegal class, but it is empty")
        pools = self.pools(work, publisher_data, classes, ctx)
        names = list(attention_projections(work.unet, TARGETS, ("to_v",)))
        if not names:
            raise DataError("darkminer found no attention value projections (attn1/attn2 to_v) in the UNet")
        adapters = add_lora(work.unet, names, p.lora_rank, p.lora_alpha, 0.0, ctx.seed)
        setup = FinetuneConfig(mixed_precision=ctx.mixed_precision, gradient_checkpointing=p.gradient_checkpointing)
        # The engine's trainer sets the work copy up (device, precision, only the adapters differentiated, the
        # generator seeded from ctx.seed) but builds no optimizer: the session builds Adam for c and SGD here.
        with Trainer(work, setup, ctx, trainable=adapters, optimize=False) as trainer:
            yield Session(self, trainer, adapters, pools, encoder, ctx, names)

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        import torch

        from advbench.adapters import merge_lora

        t0 = time.perf_counter()
        work = model.clone()
        rows, mined, stops, embeddings = [], [], {}, []
        with self.session(work, publisher_data, ctx) as session:
            names, adapters, pools = session.names, session.adapters, session.pools
            for cls in sorted(pools):
                stops[cls] = self.erase(session, cls, embeddings, rows, mined)
            encoder = session.encoder
        merge_lora(work.unet)
        protected = model.clone()
        changes = []
        with torch.no_grad():
            for name in names:
                target = protected.unet.get_submodule(name).weight
                before = target.detach().clone()
                target.copy_(work.unet.get_submodule(name).weight.detach().to(target.device, target.dtype))
                changes.append(float((target - before).norm() / before.norm().clamp_min(1e-30)))
        files = self.write_artifacts(ctx, mined, rows)
        info = self.info(rows, stops, names, adapters, pools, encoder, changes, files, time.perf_counter() - t0)
        return ProtectedModel(model=protected, constraints=[], info=info)

    def erase(self, session: Session, cls: str, embeddings: list, rows: list, mined: list) -> str:
        """The loop for one class: mine, verify, circumvent until s(c) <= tau or ``loops``; returns why it stopped.
        ``embeddings`` (the circumvented ones, all classes so far) grows; ``rows`` and ``mined`` record."""
        import torch

        from advbench_plugins.defenses.darkminer_math import derived_seed

        p, log = self.params, session.ctx.log
        for loop in range(1, p.loops + 1):
            pixels = session.sample(cls)
            init = session.init(cls)
            c, mine_losses = session.mine(pixels, init)
            s = session.verify(c, pixels, cls, loop)["s"]
            # fixed draws (t, noise) on the k mined images, repeated: L_M before and after mining
            probe, seed = pixels.repeat(EVAL_REPEATS, 1, 1, 1), derived_seed(session.ctx.seed, "eval", cls, loop)
            mining_eval = [session.mining_loss(x, probe, torch.Generator().manual_seed(seed)) for x in (init, c)]
            row = {"class": cls, "loop": loop, "s": s, "mining_eval": mining_eval, "mining": mine_losses,
                   "circumvent": []}
            mined.append((cls, loop, s, c.detach().cpu()))
            rows.append(row)
            log(f"darkminer {cls} loop {loop}/{p.loops}: L_M {mining_eval[0]:.4g} -> {mining_eval[1]:.4g} (fixed "
                f"draws), s(c) {s:.3f} (tau {p.tau})")
            if not all(math.isfinite(v) for v in (*mine_losses, s)):
                raise FloatingPointError(f"darkminer mining diverged ({cls}, loop {loop}); lower mine_lr")
            if s <= p.tau:
                return f"s <= tau at loop {loop}"
            embeddings.append((cls, c))
            row["embeddings"] = len(embeddings)
            before = session.circumvent_losses(c, probe, torch.Generator().manual_seed(seed))
            row["circumvent"] = session.circumvent(embeddings)
            after = session.circumvent_losses(c, probe, torch.Generator().manual_seed(seed))
            row["circumvent_eval"] = {"l_c": [before[0], after[0]], "l_p": [before[1], after[1]]}
            log(f"darkminer {cls} loop {loop}: circumvented, l_c {before[0]:.4g} -> {after[0]:.4g}, l_p "
                f"{before[1]:.4g} -> {after[1]:.4g} (fixed draws)")
        return "loop cap"

    # -------------------------------------------------------------------------------------- records
    @staticmethod
    def write_artifacts(ctx: Context, mined: list, rows: list[dict]) -> list[str]:
        """The mined embeddings (safetensors, one L×D tensor per loop, class/loop/s in the metadata) and the loss
        curves (JSON) in the protect stage's work folder."""
        from safetensors.torch import save_file

        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"embedding_{i:03d}": c.reshape(c.shape[-2:]).contiguous() for i, (_, _, _, c) in enumerate(mined)}
        meta = {"embeddings": json.dumps([{"name": f"embedding_{i:03d}", "class": cls, "loop": loop, "s": s}
                                          for i, (cls, loop, s, _) in enumerate(mined)])}
        save_file(tensors, str(ctx.work_dir / EMBEDDINGS_FILE), metadata=meta)
        (ctx.work_dir / CURVES_FILE).write_text(json.dumps(rows))
        return [EMBEDDINGS_FILE, CURVES_FILE]

    def info(self, rows, stops, names, adapters, pools, encoder, changes, files, seconds) -> dict[str, Any]:
        p = self.params
        from advbench_plugins.defenses.darkminer_math import loop_summary

        loops = [loop_summary(r) for r in rows]
        classes = {cls: {"s": [x["s"] for x in loops if x["class"] == cls], "stop": stops[cls],
                         "loops": sum(x["class"] == cls for x in loops), "pool_images": len(pools[cls].examples)}
                   for cls in stops}
        return {"defense": "darkminer", "settings": asdict(p), "classes": classes, "loops": loops,
                "loops_run": len(rows), "circumventions": sum(bool(r["circumvent"]) for r in rows),
                "encoder": encoder.fingerprint(), "theta_prime": "the input UNet (adapters disabled)",
                "lora": {"modules": len(names), "tensors": len(adapters), "elements": sum(a.numel() for a in adapters),
                         "rank": p.lora_rank, "alpha": p.lora_alpha},
                "max_relative_change": max(changes), "artifacts": files, "seconds": round(seconds, 3)}

