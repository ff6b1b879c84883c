"""Textual inversion (Gal et al., ICLR 2023): learn a new token's embedding, everything else frozen.

As in diffusers' ``textual_inversion.py``: a placeholder token (``<varo-kellin>``; ``num_vectors`` > 1 adds
``<varo-kellin>_1``…) is added to the tokenizer, the text encoder's input embedding table is resized, the new
rows are initialised from an initializer phrase's token embeddings (mean), and only the embedding table is given
to the shared engine as trainable. Gradients of every other row are masked to zero and, after each optimizer
step, the other rows are restored from a copy, so they stay bit-identical. Training captions and (through
``prompt_rewrites``) evaluation prompts use the placeholder instead of the class name.

Threat models: textual inversion trains no UNet tensor, so a UNet freeze mask cannot limit it: the attack
understands ``freeze_mask`` trivially (compliant and unconstrained runs are the same attack), and a
leaderboard shows honestly whether freezing stops it.

Tiny-world defaults versus the papers (see docs/attacks.md): IMMA's textual-inversion attack uses lr 5e-4
(diffusers' example: lr 5e-4 scaled by batch × accumulation, 3000 steps, batch 1, AdamW, initializer word
chosen by hand). Here: lr 5e-3, batch 8, 200 steps; the initializer defaults to the class name itself (the
only description of the class the attack receives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from advbench.interfaces import Attack, AttackData, Context, ProtectedModel
from advbench.params import check, param


def placeholder_tokens(cls: str, num_vectors: int) -> list[str]:
    """``"Varo Kellin"`` → ``["<varo-kellin>", "<varo-kellin>_1", …]``."""
    slug = re.sub(r"[^a-z0-9]+", "-", cls.lower()).strip("-") or "concept"
    base = f"<{slug}>"
    return [base] + [f"{base}_{i}" for i in range(1, num_vectors)]


class TextualInversion(Attack):
    """Textual inversion: one new token embedding (a UNet freeze mask cannot limit it; it trains no UNet tensor)."""

    constraints_understood = frozenset({"freeze_mask"})
    anytime = True

    @dataclass(frozen=True)
    class Params:
        steps: int = param(200, "Optimizer steps (the attacker's budget; diffusers' example: 3000).")
        batch_size: int = param(8, "Images per step (diffusers' example: 1).")
        lr: float = param(5e-3, "Learning rate (IMMA and diffusers' example: 5e-4 on SD).")
        optimizer: Literal["adam", "adamw", "sgd"] = param("adam", "Optimizer (diffusers' example: AdamW).")
        num_vectors: int = param(1, "Embedding vectors (tokens) learned for the class (paper: 1).")
        initializer: str = param("", "Phrase whose token embeddings (mean) start the new ones; empty: the class name.")

        def __post_init__(self):
            check(self.steps > 0, f"steps must be positive, got {self.steps}")
            check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
            check(self.lr > 0, f"lr must be positive, got {self.lr}")
            check(self.num_vectors >= 1, f"num_vectors must be >= 1, got {self.num_vectors}")

    def adapt(self, protected: ProtectedModel, data: AttackData, ctx: Context):
        from advbench.adapters import add_token_embeddings, rewrite_caption, with_captions
        from advbench.finetune import FinetuneConfig, finetune

        p = self.params
        self.effective_constraints(protected, ctx.threat_model)  # a freeze mask is understood; it limits nothing
        model = protected.model.clone()
        tokens = placeholder_tokens(data.cls, p.num_vectors)
        # Only the placeholder rows learn (a gradient hook zeroes the others); as diffusers' example does, the
        # other rows are copied back after each step, bit-identical whatever the optimizer does with zero gradients.
        new = add_token_embeddings(model, [(tokens, p.initializer or data.cls)], f"textual inversion of {data.cls!r}")
        phrase = " ".join(tokens)
        examples = with_captions(data.examples, [rewrite_caption(e.text, data.cls, phrase) for e in data.examples])
        cfg = FinetuneConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                             mixed_precision=ctx.mixed_precision)
        rewrites = {**model.prompt_rewrites, data.cls: phrase}

        def export(trained):
            out = trained.clone()
            out.prompt_rewrites = dict(rewrites)
            return out

        try:
            result = finetune(model, examples, cfg, ctx, trainable=[new.table], callback=lambda *_: new.restore(),
                              export=export)
        finally:
            new.remove()
        ctx.log(f"textual-inversion: {len(tokens)} token(s) {phrase}, {result.seconds_per_step:.3f} s/step, "
                f"final loss {result.losses[-1]:.4f}")
        model.prompt_rewrites = rewrites
        return model
