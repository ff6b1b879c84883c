"""FreezeAsGuard (arXiv 2405.17472): freeze the UNet tensors most critical to illegal adaptation.

The publisher learns a binary mask over the UNet's tensors by bilevel optimisation on its share of the illegal
and legal classes (see :mod:`advbench_plugins.defenses.fg_bilevel` for the equations); the protected model is
the *pretrained* weights plus that mask as a fine-tuning constraint, which a compliant attacker honours by
keeping the frozen tensors out of its optimizer. The attacker's share of the data is never seen here.

Steps of :meth:`FreezeAsGuard.protect`:
1. θ_ft: a full fine-tune of the pretrained model on illegal + legal publisher data through the shared engine
   (:func:`advbench.finetune.finetune`), cached as its own stage by a content hash of its inputs, so FG-10/30/50
   share it (the paper initialises θ(m) from the fully fine-tuned model to mitigate aggressive freezing).
2. Mask learning (Algorithm 1) with m = σ(w / T), w initialised to small random negative values so m ≈ 0 (the
   paper's choice; the official code instead draws w ~ U(0, 1), i.e. starts near "all frozen").
3. Rounding: exactly round(p·N) tensors with the largest w are frozen (``masking.top_mask``, shared with the
   ``random`` baseline), or, with ``unit=parameters``, tensors until a share p of the parameters.

Tiny-world defaults versus the paper (SD 1.5; Appendix B and the official ``run_mask_learner.sh``):

| setting | paper | here | why |
| --- | --- | --- | --- |
| T | 0.2 | 0.2 | |
| mask step size η₁ | 10 | 10 | |
| lower steps per mask step L | ≈10 (official script: 4) | 10 | |
| mask steps K | 400 (2000 iterations / 5) | 16 | a whole protect in ~1 min on 2 CPU cores |
| batch | 16 | 8 (half illegal, half legal) | CPU time |
| user lr η₂ (SGD) | 1e-5 | 0.01 | the largest stable SGD rate on the world model (0.05 diverged) |
| sparsity weight γ | not given (official code: 5e3) | 10 | mean m reaches p in ~5 steps; 5e3 saturates m |
| w init | small negative (official: U(0, 1)) | −0.4 ± 0.01 % (m ≈ 0.12) | jitter below the loss signal |
| λ₁, λ₂ | from the data amounts (official: ½, ½) | n_illegal/n, n_legal/n | balanced data gives ½, ½ |
| θ_ft | full fine-tune to convergence | 60 Adam steps, lr 5e-4, batch 8 | converges in 60 steps (the attacker's default was 5e-4 until issue 13; it is 1e-4 now) |
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from advbench.errors import DataError
from advbench.interfaces import Context, Defense, Example, ProtectedModel, PublisherData
from advbench.params import check, param
from advbench_plugins.defenses.masking import frozen_parameter_share, top_mask

THETA_FT_STAGE = "freezeasguard-theta-ft"
THETA_FT_VERSION = 1


class FreezeAsGuard(Defense):
    """FreezeAsGuard: a learned mask freezes the UNet tensors most critical to illegal adaptation."""

    @dataclass(frozen=True)
    class Params:
        p: float = param(0.3, "Freezing ratio in (0, 1): the share of tensors (or parameters) frozen (paper: "
                              "0.1, 0.3, 0.5).")
        unit: Literal["tensors", "parameters"] = param(
            "tensors", "Whether p counts UNet tensors (as in the paper) or parameters.")
        mask_steps: int = param(16, "Mask (upper-level) steps K (paper: 400).")
        lower_steps: int = param(10, "Simulated-user (lower-level) steps per mask step L (paper: about 10).")
        batch_size: int = param(8, "Images per step, half illegal and half legal (paper: 16).")
        temperature: float = param(0.2, "Mask temperature T in m = sigmoid(w / T) (paper: 0.2).")
        mask_lr: float = param(10.0, "Mask step size (paper: 10).")
        user_lr: float = param(0.01, "Simulated user's SGD learning rate (paper: 1e-5 on SD 1.5).")
        sparsity_weight: float = param(10.0, "Weight of the sparsity term (1'm/N - p)^2 (official code: 5e3, "
                                             "which saturates m at this scale).")
        lambda_illegal: Literal["auto"] | float = param(
            "auto", "Weight of the illegal loss in the upper objective; auto = share of illegal images.")
        lambda_legal: Literal["auto"] | float = param(
            "auto", "Weight of the legal loss in the upper objective; auto = share of legal images.")
        init_w: float = param(-0.4, "Mask logits start near this negative value (+-0.01 %), so m starts near 0 "
                                    "(paper; the official code starts near 1).")
        init_ft_steps: int = param(60, "Steps of the initial full fine-tune giving theta_ft (paper: to "
                                       "convergence).")
        init_ft_lr: float = param(5e-4, "Adam learning rate of the initial full fine-tune.")
        init_ft_batch_size: int = param(8, "Batch size of the initial full fine-tune.")
        gradient_checkpointing: bool = param(False, "Trade compute for memory (the official code uses it on SD).")

        def __post_init__(self):
            check(0.0 < self.p < 1.0, f"p must be in (0, 1), got {self.p}")
            for name in ("mask_steps", "lower_steps", "batch_size", "init_ft_steps", "init_ft_batch_size"):
                check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
            check(self.batch_size >= 2, f"batch_size must be >= 2 (half illegal, half legal), got {self.batch_size}")
            for name in ("temperature", "mask_lr", "user_lr", "init_ft_lr"):
                check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
            check(self.sparsity_weight >= 0, f"sparsity_weight must be >= 0, got {self.sparsity_weight}")
            check(self.init_w < 0, f"init_w must be negative (m starts near 0), got {self.init_w}")
            for name in ("lambda_illegal", "lambda_legal"):
                value = getattr(self, name)
                check(value == "auto" or (isinstance(value, (int, float)) and value >= 0),
                      f"{name} must be 'auto' or a number >= 0, got {value!r}")

    def lambdas(self, n_illegal: int, n_legal: int) -> tuple[float, float]:
        """λ₁, λ₂: the given numbers, or (auto) each role's share of the publisher's images."""
        total = max(n_illegal + n_legal, 1)
        lam1 = n_illegal / total if self.params.lambda_illegal == "auto" else float(self.params.lambda_illegal)
        lam2 = n_legal / total if self.params.lambda_legal == "auto" else float(self.params.lambda_legal)
        return lam1, lam2

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        from advbench.finetune import FinetuneConfig, Trainer
        from advbench_plugins.defenses import fg_artifacts
        from advbench_plugins.defenses.fg_bilevel import BilevelState, RoleBatches, initial_w, learn_mask

        illegal = [e for cls in sorted(publisher_data.illegal) for e in publisher_data.illegal[cls]]
        legal = [e for cls in sorted(publisher_data.legal) for e in publisher_data.legal[cls]]
        if not illegal:
            raise DataError("FreezeAsGuard needs the publisher's share of at least one illegal class, but it is "
                            "empty; give the domain illegal classes with images")
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        finetuned, cached = self.finetuned_state(model, illegal, legal, ctx)
        init_seconds = time.perf_counter() - t0

        lam1, lam2 = self.lambdas(len(illegal), len(legal))
        cfg = self.bilevel_config(lam1, lam2, ctx)
        work = model.clone()
        # θ(m) is the work copy's UNet: the engine's trainer sets it up (device, precision, only the UNet
        # differentiated and in train mode) but builds no optimizer: the bilevel updates are written by hand.
        setup = FinetuneConfig(mixed_precision=ctx.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing)
        with Trainer(work, setup, ctx, optimize=False) as trainer:
            pretrained = dict(model.unet.named_parameters())
            state = BilevelState(work.unet, pretrained, finetuned, initial_w(len(pretrained), cfg.init_w, ctx.seed),
                                 cfg.temperature)
            del finetuned
            batches = RoleBatches(illegal, legal, cfg.batch_size, work.resolution)

            def report(row):
                ctx.log(f"freezeasguard mask step {row['mask_step']}/{cfg.mask_steps}: upper {row['upper_loss']:.4f} "
                        f"lower {row['lower_loss']:.4f} ratio {row['soft_ratio']:.3f} (hard {row['hard_ratio']:.3f})")

            result = learn_mask(work, state, batches, cfg, ctx, trainer.accelerator, on_step=report)
        del work, state

        sizes = {name: p.numel() for name, p in model.unet.named_parameters()}
        # Rank by the logits w (m = σ(w/T) saturates to exactly 1.0 in float32, which would tie).
        scores = dict(zip(result.names, result.w))
        mask = top_mask(scores, sizes, self.params.p, self.params.unit)
        files, by_block = fg_artifacts.write_all(ctx.work_dir, mask, result, sizes,
                                                 {**asdict(self.params), "lambda_illegal": lam1, "lambda_legal": lam2})
        info = {"defense": "freezeasguard", "p": self.params.p, "unit": self.params.unit,
                "frozen_tensors": len(mask.frozen_names()), "total_tensors": len(sizes),
                "frozen_tensor_share": mask.ratio(), "frozen_parameter_share": frozen_parameter_share(mask, sizes),
                "frozen_by_block": by_block,
                "lambda_illegal": lam1, "lambda_legal": lam2,
                "publisher_images": {"illegal": len(illegal), "legal": len(legal)},
                "theta_ft_cached": cached, "theta_ft_seconds": round(init_seconds, 3),
                "mask_seconds": round(result.seconds, 3),
                "final_soft_ratio": result.curves[-1]["soft_ratio"],
                "final_hard_ratio": result.curves[-1]["hard_ratio"],
                "artifacts": sorted(p.name for p in files)}
        return ProtectedModel(model=model, constraints=[mask], info=info)

    def bilevel_config(self, lambda_illegal: float, lambda_legal: float, ctx: Context):
        from advbench_plugins.defenses.fg_bilevel import BilevelConfig

        p = self.params
        return BilevelConfig(p=p.p, mask_steps=p.mask_steps, lower_steps=p.lower_steps, batch_size=p.batch_size,
                             temperature=p.temperature, mask_lr=p.mask_lr, user_lr=p.user_lr,
                             sparsity_weight=p.sparsity_weight, lambda_illegal=lambda_illegal,
                             lambda_legal=lambda_legal, init_w=p.init_w, mixed_precision=ctx.mixed_precision,
                             gradient_checkpointing=p.gradient_checkpointing)

    # ----------------------------------------------------------------------------------- θ_ft stage
    def theta_ft_key(self, model, illegal: list[Example], legal: list[Example], ctx: Context) -> str:
        """Content hash of everything θ_ft depends on (not p or the mask settings: FG-10/30/50 share it)."""
        from advbench.cache import stable_hash
        from advbench.runner import examples_hash

        p = self.params
        return stable_hash({"stage": THETA_FT_STAGE, "version": THETA_FT_VERSION, "model": model.fingerprint(),
                            "illegal": examples_hash(illegal), "legal": examples_hash(legal), "seed": ctx.seed,
                            "steps": p.init_ft_steps, "lr": p.init_ft_lr, "batch_size": p.init_ft_batch_size,
                            "mixed_precision": ctx.mixed_precision})

    def finetuned_state(self, model, illegal: list[Example], legal: list[Example], ctx: Context):
        """θ_ft's UNet tensors (CPU, by name) and whether they came from the cache.

        The cache is ``ctx.cache_dir`` (the runner's stage cache) when the context has one, else a folder in
        ``ctx.work_dir`` (then nothing is shared between protect runs).
        """
        from safetensors.torch import load_file, save_file

        from advbench.cache import StageCache
        from advbench.finetune import FinetuneConfig, finetune

        root = getattr(ctx, "cache_dir", None) or ctx.work_dir / "cache"
        key = self.theta_ft_key(model, illegal, legal, ctx)

        def build(folder: Path) -> None:
            ft = model.clone()
            cfg = FinetuneConfig(steps=self.params.init_ft_steps, batch_size=self.params.init_ft_batch_size,
                                 lr=self.params.init_ft_lr, optimizer="adam", mixed_precision=ctx.mixed_precision,
                                 gradient_checkpointing=self.params.gradient_checkpointing)
            ctx.log(f"freezeasguard: full fine-tune for theta_ft ({cfg.steps} steps on {len(illegal)} illegal + "
                    f"{len(legal)} legal images)")
            run = finetune(ft, illegal + legal, cfg, ctx)
            state = {n: t.detach().cpu().contiguous() for n, t in ft.unet.state_dict().items()}
            save_file(state, str(folder / "unet.safetensors"))
            (folder / "finetune.json").write_text(json.dumps({"losses": run.losses, "seconds": run.seconds}))

        folder, cached = StageCache(root).get_or_build(THETA_FT_STAGE, key, build)
        return load_file(str(folder / "unet.safetensors")), cached
