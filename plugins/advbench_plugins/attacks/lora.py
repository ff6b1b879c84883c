"""LoRA: low-rank adapters on the UNet's attention projections (IMMA's LoRA attack; Hu et al. 2021).

Built the way diffusers' ``train_text_to_image_lora.py`` builds it: a ``peft.LoraConfig`` (Gaussian init,
``lora_B = 0``, so training starts from the protected model) attached with ``unet.add_adapter``, and only the
adapter's tensors in the optimizer; the DDPM loss on the attacker's captions comes from the shared engine.
The returned model has the adapter merged into the UNet (a plain model, saved like any other). Before merging,
the adapter is also written as a standard LoRA file, ``<work_dir>/pytorch_lora_weights.safetensors``, that
diffusers' ``pipeline.load_lora_weights`` / ``unet.load_lora_adapter(..., prefix="unet")`` load.

Threat models: a compliant attacker attaches no adapter to a module whose weight a freeze mask freezes (the
publisher's fine-tuning API refuses to change that tensor, and merging would change it); an unconstrained
attacker adapts every target module.

Tiny-world defaults versus the papers (see docs/attacks.md): IMMA's LoRA attack uses rank 4 and lr 1e-4 on
SD 1.5 (diffusers' example: rank 4, lr 1e-4, AdamW, 15k steps at batch 1). Here: rank 4, alpha 4, lr 2e-3,
batch 8, 200 steps — the 32×32 world model needs a larger rate to learn a class in a few hundred steps, as
for full fine-tuning (fullft: 1e-4 here since issue 13, 1e-5 in FreezeAsGuard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from advbench.adapters import UNET_TARGETS
from advbench.interfaces import Attack, AttackData, Context, ProtectedModel
from advbench.params import check, param


@dataclass(frozen=True)
class LoraParams:
    """LoRA hyper-parameters shared by ``lora`` and ``dreambooth-lora``."""

    rank: int = param(4, "LoRA rank r (IMMA: 4).")
    alpha: float = param(4.0, "LoRA alpha; the update is scaled by alpha/rank (diffusers' examples: alpha = rank).")
    dropout: float = param(0.0, "Dropout on the LoRA branch's input.")
    target_modules: tuple[str, ...] = param(UNET_TARGETS, "UNet modules (names or name suffixes) that get adapters.")
    save_lora: bool = param(True, "Also write the adapter as a diffusers LoRA safetensors file under the work folder.")

    def __post_init__(self):
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0 and all(t.strip() for t in self.target_modules),
              "target_modules must name at least one module, e.g. to_q,to_k,to_v,to_out.0")


class Lora(Attack):
    """LoRA on the UNet's attention projections, merged into the returned model (honours freeze masks)."""

    constraints_understood = frozenset({"freeze_mask"})
    anytime = True

    @dataclass(frozen=True)
    class Params(LoraParams):
        steps: int = param(200, "Optimizer steps (the attacker's budget; diffusers' example: 15000 at batch 1).")
        batch_size: int = param(8, "Images per step (diffusers' example: 1).")
        lr: float = param(2e-3, "Learning rate (IMMA: 1e-4 on SD 1.5).")
        optimizer: Literal["adam", "adamw", "sgd"] = param("adam", "Optimizer (diffusers' example: AdamW).")

        def __post_init__(self):
            super().__post_init__()
            check(self.steps > 0, f"steps must be positive, got {self.steps}")
            check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
            check(self.lr > 0, f"lr must be positive, got {self.lr}")

    def adapt(self, protected: ProtectedModel, data: AttackData, ctx: Context):
        from advbench.adapters import add_lora, lora_targets, merge_lora, merged_copy, save_lora_file
        from advbench.finetune import FinetuneConfig, finetune

        from advbench_plugins.attacks._common import frozen_unet_tensors

        p = self.params
        frozen = frozen_unet_tensors(self, protected, ctx)
        model = protected.model.clone()
        names = lora_targets(model.unet, p.target_modules, frozen)
        adapter = add_lora(model.unet, names, p.rank, p.alpha, p.dropout, ctx.seed)
        cfg = FinetuneConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                             mixed_precision=ctx.mixed_precision)
        result = finetune(model, data.examples, cfg, ctx, trainable=adapter, export=merged_copy)
        ctx.log(f"lora: {len(names)} adapted modules, {result.trainable_params} trainable parameters, "
                f"{result.seconds_per_step:.3f} s/step")
        if p.save_lora:
            save_lora_file(ctx.work_dir, model.unet)
        merge_lora(model.unet)
        return model
