"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761): erase the illegal classes' words.

Every cross-attention key and value projection (``attn2.to_k``, ``attn2.to_v``) W₀ is replaced, in closed form,
by the W that maps the key vectors of each illegal class's prompt onto W₀'s output for a guide prompt (the
class noun, or a blank) while keeping W₀'s output on the preserve prompts ('' and the legal classes' names)
and staying near W₀ (see :mod:`advbench_plugins.defenses.uce_math` for the equation and the key rows). The
protected model is the edited weights with no fine-tuning constraint; the publisher's images are never read.

Defaults versus the paper and the official code (train-scripts/train_erase.py, "2023", FreezeAsGuard's UCE
baseline; trainscripts/uce_sd_erase.py, "2025"):

| setting | official | here | why |
| --- | --- | --- | --- |
| edited layers | all ``attn2`` to_k and to_v (2023: found by walking the blocks) | the same, selected by name | |
| erase set | the concepts given | the illegal classes' names | |
| guide | ' ' if none is given ('' becomes ' ') | the class noun (``guide=blank``: ' ') | one guide per class |
| preserve set | '' + given concepts (2025: given only) | '' + legal names (``preserve=none``: '') | |
| prompts | the concept (``--add_prompts``: + 5 SD templates) | the name (``add_prompts``: + domain prompts) | |
| s_e, λ | 1, 0.5 | 1, 0.5 | |
| s_p | max(0.1, 1/len(retain)) (2025: 1) | the same (``auto``) | |
| technique | replace (also 'tensor') | replace only | |
| solve | ``mat1 @ inverse(mat2)`` in the model dtype (2025: float32) | ``linalg.solve`` in float64 | |

Quirks of the official code not copied: ``--add_prompts`` is declared ``type=bool``, so any value, even
"False", turns it on; the 2025 ``--expand_prompts`` zips the erase concepts with the preserve concepts (it
expands nothing without preserve concepts) and adds the templated erase prompts to the preserve set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from advbench.errors import DataError
from advbench.interfaces import Context, Defense, ProtectedModel, PublisherData
from advbench.params import check, param

BLANK = " "  # the official code's guide when none is given ('' is turned into ' ')


@dataclass(frozen=True)
class ConceptPlan:
    """The prompts UCE edits with: erase prompts with their guides, and preserve prompts."""

    erase: list[str]
    guides: list[str]
    preserve: list[str]  # '' first, then the preserve concepts
    preserve_scale: float


class UCE(Defense):
    """Unified Concept Editing: closed-form edit of cross-attention K/V projections away from illegal names."""

    @dataclass(frozen=True)
    class Params:
        keys: Literal["2023", "2025"] = param(
            "2023", "Which key rows: 2023 = last word token to the end of the padded prompt (official "
                    "train_erase.py, FreezeAsGuard's baseline); 2025 = the last word token only (uce_sd_erase.py).")
        guide: Literal["noun", "blank"] = param(
            "noun", "Guide each illegal class to its domain noun ('person'), or to ' ' (official default "
                    "without a guide concept). A class without a noun gets ' '.")
        preserve: Literal["legal", "none"] = param(
            "legal", "Preserve '' plus the legal classes' names, or '' only (official preserve_false).")
        add_prompts: bool = param(
            False, "Also erase the domain's evaluation prompts of each illegal class, each guided to the bare "
                   "guide (official --add_prompts: 5 SD templates; default off).")
        erase_scale: float = param(1.0, "Erase scale s_e (official: 1).")
        preserve_scale: Literal["auto"] | float = param(
            "auto", "Preserve scale s_p; auto = max(0.1, 1/len(['']+preserve concepts)) (official 2023; 2025: 1).")
        lamb: float = param(0.5, "Regulariser lambda towards the original weights (official: 0.5).")
        edit_keys: bool = param(True, "Edit attn2.to_k as well as attn2.to_v (official with_to_k: True).")

        def __post_init__(self):
            check(self.erase_scale > 0, f"erase_scale must be positive, got {self.erase_scale}")
            check(self.lamb > 0, f"lamb must be positive, got {self.lamb}")
            value = self.preserve_scale
            check(value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and value >= 0),
                  f"preserve_scale must be 'auto' or a number >= 0, got {value!r}")

    def plan(self, publisher_data: PublisherData, rewrite=lambda text: text) -> ConceptPlan:
        """Erase prompts (class names, plus the domain's prompts with ``add_prompts``), guides, preserve prompts.

        ``rewrite`` is the model's prompt rewriting (:meth:`advbench.model.Model.rewrite_prompt`), applied to
        every prompt so that UCE edits the words the sampler will feed.
        """
        p = self.params
        erase, guides = [], []
        for cls in sorted(publisher_data.illegal):
            texts = [cls]
            if p.add_prompts:
                extra = publisher_data.prompts.get(cls, [])
                if not extra:
                    raise DataError(f"uce: add_prompts=true but the domain gave no prompts for illegal class "
                                    f"{cls!r}; set add_prompts=false or give the domain's prompts")
                texts += [t for t in extra if t != cls]
            noun = publisher_data.noun(cls).strip() if p.guide == "noun" else ""
            guide = noun or BLANK
            erase += [rewrite(t) for t in texts]
            guides += [rewrite(guide)] * len(texts)
        concepts = [rewrite(c) for c in sorted(publisher_data.legal)] if p.preserve == "legal" else []
        preserve = [""] + [c for c in concepts if c]
        scale = max(0.1, 1 / len(preserve)) if p.preserve_scale == "auto" else float(p.preserve_scale)
        return ConceptPlan(erase, guides, preserve, scale)

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        import torch

        from advbench.adapters import attention_projections
        from advbench_plugins.defenses.uce_math import closed_form, key_slices, preserve_keys

        if not publisher_data.illegal:
            raise DataError("UCE needs at least one illegal class to erase, but the publisher data has none")
        t0 = time.perf_counter()
        p = self.params
        plan = self.plan(publisher_data, model.rewrite_prompt)
        work = model.clone()
        tok, enc = work.tokenizer, work.text_encoder
        pairs = [key_slices(tok, enc, e, g, p.keys) for e, g in zip(plan.erase, plan.guides)]
        keys_e = torch.cat([k for k, _ in pairs]).double()
        guide_e = torch.cat([g for _, g in pairs]).double()
        keys_p = torch.cat([preserve_keys(tok, enc, text, p.keys) for text in plan.preserve]).double()
        layers = attention_projections(work.unet, ("attn2",), ("to_k", "to_v") if p.edit_keys else ("to_v",))
        if not layers:
            raise DataError("UCE found no cross-attention (attn2) key/value projections in the UNet")
        ctx.log(f"uce: editing {len(layers)} projections; erase {plan.erase} -> {plan.guides}; preserve "
                f"{plan.preserve} (s_p={plan.preserve_scale:.3g})")
        changes = {}
        with torch.no_grad():
            for name, layer in layers.items():
                w0 = layer.weight
                w0_64 = w0.detach().double()
                values = guide_e.to(w0.device) @ w0_64.T  # v* = W₀ c_guide, per key row
                w = closed_form(w0, keys_e, values, keys_p, p.lamb, p.erase_scale, plan.preserve_scale)
                changes[name] = float((w.double() - w0_64).norm() / w0_64.norm().clamp_min(1e-30))
                layer.weight.copy_(w)
        info = {"defense": "uce", "variant": p.keys, "edited_layers": len(layers),
                "edited_projections": sorted({n.rsplit(".", 1)[-1] for n in layers}),
                "erase_prompts": plan.erase, "guide_prompts": plan.guides, "preserve_prompts": plan.preserve,
                "erase_keys": int(keys_e.shape[0]), "preserve_keys": int(keys_p.shape[0]),
                "erase_scale": p.erase_scale, "preserve_scale": plan.preserve_scale, "lamb": p.lamb,
                "max_relative_change": max(changes.values()),
                "seconds": round(time.perf_counter() - t0, 3)}
        return ProtectedModel(model=work, constraints=[], info=info)
