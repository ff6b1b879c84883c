"""What only the built-in attacks need: the UNet tensors an attack must leave alone.

LoRA adapters, new token embeddings, caption rewriting, frozen-name extraction and attention finders live in
:mod:`advbench.adapters`, the core module that attacks and defenses share (a defense never imports an attack).
"""

from __future__ import annotations

from advbench.adapters import frozen_unet_names


def frozen_unet_tensors(attack, protected, ctx) -> set[str]:
    """UNet tensor names the attack must leave untouched (empty for the unconstrained threat model)."""
    return frozen_unet_names(attack.effective_constraints(protected, ctx.threat_model), attack.name)
