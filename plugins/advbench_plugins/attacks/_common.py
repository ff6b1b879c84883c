"""Shared pieces of the built-in attacks that only attacks need: the frozen tensors of an attack, caption rewriting.

LoRA adapters, frozen-name extraction and attention finders live in :mod:`advbench.adapters`, the core
module that attacks and defenses share (a defense never imports an attack).
"""

from __future__ import annotations

from advbench.adapters import frozen_unet_names
from advbench.interfaces import Example


def frozen_unet_tensors(attack, protected, ctx) -> set[str]:
    """UNet tensor names the attack must leave untouched (empty for the unconstrained threat model)."""
    return frozen_unet_names(attack.effective_constraints(protected, ctx.threat_model), attack.name)


# -------------------------------------------------------------------------------------------- captions
def rewrite_caption(caption: str, cls: str, phrase: str) -> str:
    """``caption`` with the class name replaced by ``phrase`` (prefixed when the caption does not name it)."""
    if cls and cls in caption:
        return " ".join(caption.replace(cls, phrase).split())
    return f"{phrase}, {caption}" if phrase else caption


def with_captions(examples: list[Example], captions: list[str]) -> list[Example]:
    """Copies of ``examples`` (same image) with new captions."""
    return [Example(text=t, cls=e.cls, image=e.image, path=e.path) for e, t in zip(examples, captions)]
