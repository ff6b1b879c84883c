"""DreamBooth (Ruiz et al., CVPR 2023) and its LoRA variant: subject-driven fine-tuning with prior preservation.

The attacker binds the attacked class to a rare identifier: every training caption has the class name replaced
by ``"<identifier> <class noun>"`` (``"a photo of Varo Kellin"`` → ``"a photo of sks person"``). The
class-specific prior-preservation loss keeps the class noun's prior: before fine-tuning, the model being
attacked generates ``num_class_images`` images of the class prompts (the captions with the class name replaced
by the class noun alone), and each step adds ``prior_loss_weight`` × the DDPM loss on a batch of them::

    L = E ||ε − ε_θ(x_t, t, c_id)||² + λ · E ||ε' − ε_θ(x'_t, t', c_class)||²

Class images are cached by content hash (model fingerprint, prompts, count, seed, sampler) under
``class_cache_dir`` (default ``<run's stage cache>/dreambooth-class-images``, ``ctx.cache_dir``; outside a run
``$ADVBENCH_CACHE`` or ``.advbench_cache``), so every cell attacking the same protected model reuses them.
The returned model's ``prompt_rewrites`` maps the class name to the identifier phrase, so evaluation prompts
ask for the learned subject. ``dreambooth`` trains the whole UNet (optionally the
text encoder) through the shared engine, honouring freeze masks; ``dreambooth-lora`` trains LoRA adapters on
the attention projections (and the text encoder's, when it trains it) and merges them, writing the adapter
as a diffusers LoRA file first.

``class_noun`` is the DreamBooth paper's coarse class word ("person", "painting"). The attack cannot know a
domain's noun, so it comes from the domain (``Domain.class_noun``, passed in ``AttackData.class_noun``); the
parameter overrides it. With neither, the identifier alone replaces the name and the class prompts are the
captions with the name removed ("a photo of").

Tiny-world defaults versus the papers (see docs/attacks.md): DreamBooth on SD uses lr 5e-6 (IMMA's setting
too), λ = 1, ~1000 steps, ~1000 class images, batch 1, AdamW; diffusers' LoRA variant lr 1e-4, rank 4. Here:
lr 2.5e-4 (full) / 2e-3 (LoRA), λ = 1, 200 steps, 32 class images sampled with DDIM 25 steps and guidance
3.0, batch 4 instance + 4 class images.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from advbench.interfaces import Attack, AttackData, Context, Example, ProtectedModel
from advbench.params import check, param

from advbench_plugins.attacks.lora import LoraParams

CACHE_SUBDIR = "dreambooth-class-images"


@dataclass(frozen=True)
class DreamBoothParams:
    """Hyper-parameters of ``dreambooth`` (and, with :class:`LoraParams`, of ``dreambooth-lora``)."""

    steps: int = param(200, "Optimizer steps (the attacker's budget; paper: ~1000).")
    batch_size: int = param(4, "Instance images per step; as many class images are added (paper: 1).")
    lr: float = param(2.5e-4, "Learning rate (DreamBooth and IMMA on SD: 5e-6).")
    optimizer: Literal["adam", "adamw", "sgd"] = param("adam", "Optimizer (paper code: AdamW).")
    identifier: str = param("sks", "Rare token that names the subject in training and evaluation prompts.")
    class_noun: str = param("", "Coarse class word (paper: e.g. 'dog'); empty: the domain's noun, if any.")
    prior_preservation: bool = param(True, "Add the class-specific prior-preservation loss.")
    prior_loss_weight: float = param(1.0, "Weight λ of the prior-preservation loss (paper: 1).")
    num_class_images: int = param(32, "Class images generated before fine-tuning (paper: ~1000).")
    class_sampling_steps: int = param(25, "DDIM steps for the class images (SD pipelines: 50).")
    class_guidance_scale: float = param(3.0, "Guidance scale for the class images (SD: 7.5).")
    class_cache_dir: str = param("", "Class-image cache folder; empty: <stage cache>/dreambooth-class-images.")
    train_text_encoder: bool = param(False, "Also train the text encoder (paper: optional).")
    gradient_checkpointing: bool = param(False, "Trade compute for memory (useful on real SD).")

    def __post_init__(self):
        check(self.steps > 0, f"steps must be positive, got {self.steps}")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(bool(self.identifier.strip()) and len(self.identifier.split()) == 1,
              f"identifier must be one non-empty word, got {self.identifier!r}")
        check(self.prior_loss_weight >= 0, f"prior_loss_weight must be >= 0, got {self.prior_loss_weight}")
        check(self.num_class_images >= 1, f"num_class_images must be >= 1, got {self.num_class_images}")
        check(self.class_sampling_steps >= 1, f"class_sampling_steps must be >= 1, got {self.class_sampling_steps}")
        check(self.class_guidance_scale >= 0, f"class_guidance_scale must be >= 0, got {self.class_guidance_scale}")


def dreambooth_loss(model, batch, prior_loss_weight: float):
    """Instance DDPM loss plus ``prior_loss_weight`` × the DDPM loss on the batch's class images (if any)."""
    from advbench.finetune import diffusion_loss

    generator = batch["generator"]
    loss = diffusion_loss(model, batch["pixel_values"], batch["captions"], generator)
    if "class_pixel_values" in batch:
        # Prior preservation: the model must still denoise its own samples of the class noun as before.
        prior = diffusion_loss(model, batch["class_pixel_values"], batch["class_captions"], generator)
        loss = loss + prior_loss_weight * prior
    return loss


def class_prompts(examples: list[Example], cls: str, class_noun: str, n: int) -> list[str]:
    """``n`` class prompts: the distinct captions with the class name replaced by the class noun, cycled."""
    from advbench.adapters import noun_prompts

    return noun_prompts([(e.text, cls, class_noun) for e in examples], n)


def class_images(model, prompts: list[str], ctx: Context, steps: int, guidance_scale: float,
                 cache_dir: str | Path | None = None) -> list[Example]:
    """The model's own images of ``prompts`` (one each), generated once and cached by content hash."""
    import numpy as np

    from advbench.cache import default_cache_dir, stable_hash
    from advbench.sampling import SamplingConfig, generate

    sampling = SamplingConfig(scheduler="ddim", steps=steps, guidance_scale=guidance_scale, batch_size=16)
    key = stable_hash({"model": model.fingerprint(), "prompts": prompts, "n": len(prompts), "seed": ctx.seed,
                       "sampling": sampling.__dict__, "version": 1})
    # Next to the run's stage cache (ctx.cache_dir), else under the default cache folder.
    root = Path(cache_dir) if cache_dir else Path(ctx.cache_dir or default_cache_dir()) / CACHE_SUBDIR
    folder = root / key
    if not (folder / "images.npy").exists():
        ctx.log(f"dreambooth: generating {len(prompts)} class images (cached in {folder})")
        images = generate(model, prompts, sampling, ctx)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=root))
        try:
            np.save(tmp / "images.npy", images, allow_pickle=False)
            (tmp / "prompts.json").write_text(json.dumps(prompts))
            if not folder.exists():
                os.replace(tmp, folder)  # atomic: a killed run never leaves a half-written entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    images = np.load(folder / "images.npy", allow_pickle=False)
    cached_prompts = json.loads((folder / "prompts.json").read_text())
    return [Example(text=t, cls="__class_prior__", image=im) for t, im in zip(cached_prompts, images)]


class PairedBatches:
    """Instance batches, each with a batch of class images when prior preservation is on (resumable state)."""

    def __init__(self, instances, priors=None):
        self.instances, self.priors = instances, priors

    def __call__(self, step, generator):
        pixels, captions = self.instances.draw(generator)
        batch = {"pixel_values": pixels, "captions": captions}
        if self.priors is not None:
            batch["class_pixel_values"], batch["class_captions"] = self.priors.draw(generator)
        return batch

    def state_dict(self):
        return {"instances": self.instances.state_dict(),
                "priors": self.priors.state_dict() if self.priors is not None else None}

    def load_state_dict(self, state):
        self.instances.load_state_dict(state["instances"])
        if self.priors is not None:
            self.priors.load_state_dict(state["priors"])


class DreamBooth(Attack):
    """DreamBooth: whole-UNet fine-tuning with an identifier token and prior preservation (honours freeze masks)."""

    constraints_understood = frozenset({"freeze_mask"})
    anytime = True
    Params = DreamBoothParams

    def noun(self, data: AttackData) -> str:
        """The class noun: the parameter if set, else the domain's (``AttackData.class_noun``)."""
        return self.params.class_noun or data.class_noun

    def phrase(self, noun: str = "") -> str:
        """What replaces the class name in training captions and evaluation prompts."""
        return f"{self.params.identifier} {noun}".strip()

    def adapt(self, protected: ProtectedModel, data: AttackData, ctx: Context):
        from advbench.adapters import rewrite_caption, with_captions
        from advbench.errors import DataError
        from advbench.finetune import FinetuneConfig, SeededBatcher, finetune

        from advbench_plugins.attacks._common import frozen_unet_tensors

        p = self.params
        if not data.examples:
            raise DataError(f"dreambooth got no images of class {data.cls!r}; check the attacker's split")
        frozen = frozen_unet_tensors(self, protected, ctx)
        model = protected.model.clone()
        phrase = self.phrase(self.noun(data))
        instance = with_captions(data.examples, [rewrite_caption(e.text, data.cls, phrase) for e in data.examples])
        instances = SeededBatcher(instance, p.batch_size, model.resolution)
        priors = None
        if p.prior_preservation:
            prompts = class_prompts(data.examples, data.cls, self.noun(data), p.num_class_images)
            # Class images come from the model being attacked, before any fine-tuning (the paper's recipe).
            priors = SeededBatcher(class_images(model, prompts, ctx, p.class_sampling_steps,
                                                p.class_guidance_scale, p.class_cache_dir or None),
                                   p.batch_size, model.resolution)
        rewrites = {**model.prompt_rewrites, data.cls: phrase}

        def export(trained):
            out = self.merged(trained)
            out.prompt_rewrites = dict(rewrites)
            return out

        trainable, engine_frozen = self.prepare(model, frozen, ctx)
        cfg = FinetuneConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                             mixed_precision=ctx.mixed_precision, gradient_checkpointing=p.gradient_checkpointing,
                             train_text_encoder=p.train_text_encoder and trainable is None)
        result = finetune(model, PairedBatches(instances, priors), cfg, ctx, frozen=engine_frozen,
                          trainable=trainable, export=export,
                          loss_fn=lambda m, batch, step: dreambooth_loss(m, batch, p.prior_loss_weight))
        ctx.log(f"{self.name or 'dreambooth'}: {result.trainable_params} trainable parameters, "
                f"{result.seconds_per_step:.3f} s/step, final loss {result.losses[-1]:.4f}")
        self.finish(model, ctx)
        model.prompt_rewrites = rewrites
        return model

    def prepare(self, model, frozen: set[str], ctx: Context):
        """``(trainable, frozen)`` for the engine: the default selection minus the frozen UNet tensors."""
        return None, frozen

    def finish(self, model, ctx: Context) -> None:
        """Post-training step (the LoRA variant saves and merges its adapters)."""

    def merged(self, model):
        """A copy of the training model as a plain model (the LoRA variant merges its adapters into it)."""
        return model.clone()


class DreamBoothLoRA(DreamBooth):
    """DreamBooth's objective through LoRA adapters, merged at the end (no adapter on a frozen module)."""

    @dataclass(frozen=True)
    class Params(DreamBoothParams, LoraParams):
        lr: float = param(2e-3, "Learning rate (diffusers' DreamBooth-LoRA and IMMA's LoRA: 1e-4 on SD).")
        train_text_encoder: bool = param(False, "Also put LoRA adapters on the text encoder's attention.")

        def __post_init__(self):
            DreamBoothParams.__post_init__(self)
            LoraParams.__post_init__(self)

    def prepare(self, model, frozen: set[str], ctx: Context):
        from advbench.adapters import TEXT_TARGETS, add_lora, lora_targets

        p = self.params
        names = lora_targets(model.unet, p.target_modules, frozen)
        params = add_lora(model.unet, names, p.rank, p.alpha, p.dropout, ctx.seed)
        if p.train_text_encoder:  # a UNet freeze mask does not cover the text encoder
            text_names = lora_targets(model.text_encoder, TEXT_TARGETS, what="text encoder")
            params += add_lora(model.text_encoder, text_names, p.rank, p.alpha, p.dropout, ctx.seed + 1)
        # Frozen tensors stay untouched because no adapter wraps them; peft renamed the wrapped weights.
        return params, ()

    def merged(self, model):
        from advbench.adapters import merged_copy

        return merged_copy(model)

    def finish(self, model, ctx: Context) -> None:
        from advbench.adapters import merge_lora, save_lora_file

        text_encoder = model.text_encoder if self.params.train_text_encoder else None
        if self.params.save_lora:
            save_lora_file(ctx.work_dir, model.unet, text_encoder)
        merge_lora(model.unet)
        if text_encoder is not None:
            merge_lora(text_encoder)
