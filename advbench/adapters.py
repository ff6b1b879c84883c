"""Pieces that attacks and defenses share for editing a model: attention finders, LoRA, frozen names, new token
embeddings (textual inversion) and the captions that name them.

A defense must never import an attack (nor an attack a defense), so whatever both need lives here, in the core.

LoRA follows diffusers' training examples: a ``peft.LoraConfig`` with Gaussian initialisation attached with
``add_adapter`` (``lora_B`` starts at zero, so the adapted model starts equal to the protected one). A compliant
attacker attaches no adapter to a module whose weight tensor a freeze mask freezes: the publisher's API would
refuse to change that tensor, and a merged adapter would change it.

Importing this module imports no torch (attack modules read ``UNET_TARGETS`` at import time, and plugin
modules stay light to import); each function imports what it needs.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from advbench.errors import ConstraintError, DataError, ParamError
from advbench.interfaces import Example, FreezeMask

if TYPE_CHECKING:
    import torch

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_TARGETS = ATTENTION_PROJECTIONS  # LoRA's UNet targets: the attention projections (IMMA's and diffusers' choice)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP text-encoder attention, as diffusers' examples
LORA_FILE = "pytorch_lora_weights.safetensors"


def attention_projections(unet: torch.nn.Module, attention: Iterable[str] = ("attn1", "attn2"),
                          projections: Iterable[str] = ATTENTION_PROJECTIONS) -> dict[str, torch.nn.Linear]:
    """The attention projection layers of ``unet`` by full module name, in the UNet's module order.

    ``attention`` picks self-attention (``attn1``) and/or cross-attention (``attn2``, whose keys and values
    read the text encoder's hidden states); ``projections`` picks ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``.
    Matches diffusers' naming (``...transformer_blocks.0.attn2.to_k``), as UCE's and IMMA's code select layers.
    """
    import torch

    attention, projections = tuple(attention), tuple(projections)
    out = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = name.split(".")
        for proj in projections:
            tail = proj.split(".")
            if parts[-len(tail):] == tail and len(parts) > len(tail) and parts[-len(tail) - 1] in attention:
                out[name] = module
    return out


# ------------------------------------------------------------------------------------------ frozen names
def frozen_unet_names(constraints, attack_name: str) -> set[str]:
    """UNet tensor names frozen by the freeze masks among ``constraints``."""
    frozen: set[str] = set()
    for c in constraints:
        if isinstance(c, FreezeMask):
            if c.component != "unet":
                raise ConstraintError(f"attack '{attack_name}' only honours UNet freeze masks, not "
                                      f"'{c.component}' ones; use --threat-model unconstrained to ignore it")
            frozen |= set(c.frozen_names())
    return frozen


# ------------------------------------------------------------------------------------------------ LoRA
def lora_targets(module: torch.nn.Module, targets: tuple[str, ...], frozen: set[str] = frozenset(),
                 what: str = "UNet") -> list[str]:
    """Full names of the modules matching ``targets`` (a name or a ``.``-suffix) whose weight is not frozen."""
    import torch

    matched = [name for name, sub in module.named_modules()
               if isinstance(getattr(sub, "weight", None), torch.Tensor)
               and any(name == t or name.endswith("." + t) for t in targets)]
    if not matched:
        raise ParamError(f"LoRA target_modules {','.join(targets)} match no module of the {what}; "
                         f"use attention projection names such as {','.join(UNET_TARGETS)}")
    allowed = [name for name in matched if f"{name}.weight" not in frozen]
    if not allowed:
        raise ConstraintError(f"the freeze mask freezes the weight of all {len(matched)} LoRA target modules, so a "
                              f"compliant attacker can attach no adapter; target other modules or lower the ratio")
    return allowed


def add_lora(module: torch.nn.Module, names: list[str], rank: int, alpha: float, dropout: float,
             seed: int) -> list[torch.nn.Parameter]:
    """Attach a LoRA adapter to exactly ``names``; returns its parameters (seeded init).

    A diffusers model gets it through its own ``add_adapter``, as diffusers' training scripts do. Any other
    module (the transformers text encoder) gets it from peft directly: transformers' ``add_adapter`` refuses
    peft releases older than the one it was built against (5.24 asks for a peft that is not yet released),
    while peft's ``inject_adapter_in_model`` builds the same layers and records the same ``peft_config``.
    """
    import torch
    from diffusers import ModelMixin
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=list(names))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(module, ModelMixin):
            module.add_adapter(config)
        else:
            inject_adapter_in_model(config, module, adapter_name="default")  # also sets module.peft_config
    return [p for n, p in module.named_parameters() if "lora_" in n]


def lora_state(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter as a diffusers-format state dict with alpha/r baked into the up weights, and its metadata.

    Baking the scale in (and declaring ``lora_alpha = r``) makes the file reproduce the adapter in any loader,
    whether or not it reads the LoRA metadata that diffusers stores in the safetensors header.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    config = module.peft_config["default"]
    scale = config.lora_alpha / config.r
    state = {k: (v * scale if "lora_B" in k else v).detach().cpu().contiguous()
             for k, v in get_peft_model_state_dict(module).items()}
    meta = config.to_dict()
    meta["lora_alpha"] = config.r
    meta["target_modules"] = sorted(meta["target_modules"])
    return convert_state_dict_to_diffusers(state), meta


def save_lora_file(folder: str | Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` for diffusers' ``load_lora_weights`` / ``load_lora_adapter``."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet_state, unet_meta = lora_state(unet)
    kwargs: dict[str, Any] = {"unet_lora_layers": unet_state, "unet_lora_adapter_metadata": unet_meta}
    if text_encoder is not None and getattr(text_encoder, "peft_config", None):
        kwargs["text_encoder_lora_layers"], kwargs["text_encoder_lora_adapter_metadata"] = lora_state(text_encoder)
    StableDiffusionPipeline.save_lora_weights(folder, safe_serialization=True, weight_name=LORA_FILE, **kwargs)
    return folder / LORA_FILE


def merged_copy(model):
    """A copy of ``model`` with its LoRA adapters merged (the adapted model at an anytime snapshot)."""
    out = model.clone()
    for module in (out.unet, out.text_encoder):
        if getattr(module, "peft_config", None):
            merge_lora(module)
    return out


def merge_lora(module: torch.nn.Module) -> None:
    """Merge every LoRA layer into its base weight and remove the peft wrappers (plain module, same keys)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in list(module.named_modules()):
        if isinstance(sub, BaseTunerLayer):
            sub.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, sub.get_base_layer())
    for attr in ("peft_config",):
        if hasattr(module, attr):
            delattr(module, attr)
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False


# ------------------------------------------------------------------------------------ captions, tokens
def rewrite_caption(caption: str, cls: str, phrase: str) -> str:
    """``caption`` with the class name replaced by ``phrase`` (prefixed when the caption does not name it)."""
    if cls and cls in caption:
        return " ".join(caption.replace(cls, phrase).split())
    return f"{phrase}, {caption}" if phrase else caption


def with_captions(examples: list[Example], captions: list[str]) -> list[Example]:
    """Copies of ``examples`` (same image) with new captions."""
    return [Example(text=t, cls=e.cls, image=e.image, path=e.path) for e, t in zip(examples, captions)]


def noun_prompts(captions: Iterable[tuple[str, str, str]], n: int) -> list[str]:
    """``n`` prompts for DreamBooth's class images from ``(caption, class name, class noun)`` triples: the distinct
    captions with the class name replaced by the noun, sorted, cycled."""
    distinct = sorted({rewrite_caption(text, cls, noun).strip(" ,") or "a photo" for text, cls, noun in captions})
    return [distinct[i % len(distinct)] for i in range(n)]


@dataclass
class NewTokens:
    """Token embeddings added by :func:`add_token_embeddings`; only their rows of ``table`` learn."""

    table: torch.nn.Parameter  # the text encoder's input embedding table
    ids: list[int]
    keep: torch.Tensor  # True for every row that existed before
    original: torch.Tensor
    handle: Any  # the gradient hook; ``remove()`` takes it off

    def restore(self) -> None:
        """Copy every other row back, as diffusers' textual-inversion example does after each optimizer step: an
        optimizer with weight decay (or momentum) moves rows whose gradient is zero."""
        import torch

        with torch.no_grad():
            rows = self.keep.to(self.table.device)
            self.table[rows] = self.original[self.keep].to(self.table.device, self.table.dtype)

    def remove(self) -> None:
        self.handle.remove()


def add_token_embeddings(model, groups: list[tuple[list[str], str]], owner: str) -> NewTokens:
    """Add each group's tokens to ``model``'s tokenizer and text encoder; every row of a group starts at the mean
    embedding of its initializer phrase's tokens (of every old row when the phrase is empty). A gradient hook
    zeroes the other rows' gradients, so an optimizer given ``[table]`` trains the new rows only. ``owner`` names
    who adds them, for the error when the tokenizer already has one (the model was edited by it before)."""
    import torch

    every = [t for tokens, _ in groups for t in tokens]
    if model.tokenizer.add_tokens(every) != len(every):
        raise DataError(f"the tokenizer already has {owner}'s token {every[0]!r}: this model was already edited "
                        f"by {owner}; start from the model before it")
    model.text_encoder.resize_token_embeddings(len(model.tokenizer), mean_resizing=False)
    table = model.text_encoder.get_input_embeddings().weight
    ids = model.tokenizer.convert_tokens_to_ids(every)
    with torch.no_grad():
        for tokens, phrase in groups:
            init = model.tokenizer(phrase, add_special_tokens=False).input_ids if phrase else []
            table[model.tokenizer.convert_tokens_to_ids(tokens)] = (table[init] if init else table[:min(ids)]).mean(0)
    keep = torch.ones(table.shape[0], dtype=torch.bool)
    keep[ids] = False
    handle = table.register_hook(lambda g: g * (~keep).to(g.device, g.dtype)[:, None])
    return NewTokens(table, ids, keep, table.detach().clone(), handle)
