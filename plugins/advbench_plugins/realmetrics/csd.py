"""CSD style similarity (Somepalli et al. 2024, "Measuring Style Similarity in Diffusion Models").

The model, as the paper and its official code (github.com/learn2phoenix/CSD, ``CSD_CLIP``) describe it: OpenAI
CLIP's ViT-L/14 image tower, fine-tuned, without its own output projection (the 1024-d ``ln_post`` of the class
token), followed by a style head ``last_layer_style`` (a 1024×768 matrix, initialised from CLIP's projection);
the style embedding is ``normalize(feature @ last_layer_style)``. (A content head ``last_layer_content`` was
trained adversarially beside it; it is not used for style and is ignored when loading.) The image tower is
open_clip's ``ViT-L-14-quickgelu``, whose tensor names are OpenAI CLIP's.

Checkpoint key layout (the official ``checkpoint.pth``: a dict whose ``model_state_dict`` holds these keys,
prefixed ``module.`` by DistributedDataParallel; optimiser state and the training ``args`` beside it are read
safely and ignored; a ``.safetensors`` file with the same keys also loads):

- ``backbone.class_embedding``, ``backbone.positional_embedding``, ``backbone.conv1.weight``,
  ``backbone.ln_pre.{weight,bias}``, ``backbone.transformer.resblocks.<i>.{ln_1,attn,ln_2,mlp}.*``,
  ``backbone.ln_post.{weight,bias}`` — CLIP's visual tensors without ``proj``;
- ``last_layer_style`` (width × embed_dim: 1024×768 for ViT-L/14);
- ``last_layer_content`` or ``last_layer_content.*`` (ignored).

Preprocessing (the official ``transforms_branch0``, which is open_clip's eval transform for OpenAI models):
resize the short side to 224 (bicubic), centre-crop 224, scale to [0, 1], normalise with CLIP's mean and std.

``csd`` = mean over generated images of the cosine similarity of their style embeddings to the class's
references (``reduce`` as in :mod:`.similarity`); higher is better (the attacked style is reproduced).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from advbench.errors import DataError
from advbench.params import param

from ._common import embed_batches
from .similarity import (EmbeddingReduce, EmbeddingSimilarity, check_weights_params, load_weights, read_state_dict,
                         reduce_param, stamp)

CSD_MODEL = "ViT-L-14-quickgelu"
CSD_CHECKPOINT = "models/csd/checkpoint.pth"
IGNORED = ("last_layer_content",)


def build_csd(model: str, who: str = "csd"):
    """The CSD style model for an open_clip architecture (a name or a model-config JSON), on the meta device:
    a module with ``backbone`` (the image tower, ``proj`` removed) and the parameter ``last_layer_style``."""
    import open_clip
    import torch
    from open_clip.model import _build_vision_tower  # builds the image tower alone (no text tower)

    from .clip import _architecture

    config = open_clip.get_model_config(_architecture(model, who))
    with torch.device("meta"):  # no time spent on random init: every tensor comes from the checkpoint
        visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"],
                                     quick_gelu=config.get("quick_gelu", False))
        if not isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
            raise DataError(f"{who}: architecture {model} has no CLIP ViT image tower with an output projection; "
                            f"use {CSD_MODEL} (CSD's ViT-L/14) or another open_clip ViT")
        net = torch.nn.Module()
        net.last_layer_style = torch.nn.Parameter(torch.empty_like(visual.proj))
        visual.proj = None  # the tower now returns ln_post of the class token
        net.backbone = visual
    return net, visual.image_size


@functools.lru_cache(maxsize=2)
def load_csd(model: str, checkpoint: tuple[str, int, int], device: str, who: str = "csd"):
    """(style-embedding function, eval transform) with weights from a local checkpoint (a :func:`stamp`)."""
    import open_clip
    import torch

    net, image_size = build_csd(model, who)
    state = {k: v for k, v in read_state_dict(checkpoint[0], who).items() if not k.startswith(IGNORED)}
    load_weights(net, state, checkpoint[0], who, f"CSD on {model}", assign=True)
    leftover = [n for n, t in (*net.named_parameters(), *net.named_buffers()) if t.is_meta]
    if leftover:  # a tensor the checkpoint cannot fill (an architecture with buffers outside its state dict)
        raise DataError(f"{who}: architecture {model} keeps tensors no checkpoint fills ({leftover[0]}); "
                        f"use {CSD_MODEL}")
    net = net.eval().to(device)

    def style(pixels: torch.Tensor) -> torch.Tensor:
        return net.backbone(pixels) @ net.last_layer_style  # normalised by embed_batches

    return style, open_clip.image_transform(image_size, is_train=False)


@dataclass(frozen=True)
class CsdParams:
    model: str = param(CSD_MODEL, "open_clip architecture of CSD's image tower, or the path of a model-config JSON.")
    checkpoint: str = param(CSD_CHECKPOINT, "Local CSD checkpoint (official checkpoint.pth or a .safetensors with "
                                            "the same keys; no download).", path=True)
    reduce: EmbeddingReduce = reduce_param()
    batch_size: int = param(32, "Images per batch.")

    def __post_init__(self):
        check_weights_params(self, CSD_MODEL)


class CsdStyleSimilarity(EmbeddingSimilarity):
    """Cosine similarity of CSD style embeddings of generated and reference images (higher better)."""

    measures = "style"
    label = "csd"
    Params = CsdParams

    def weight_files(self):
        where = ("download the CSD ViT-L checkpoint (checkpoint.pth) linked from the README of "
                 "https://github.com/learn2phoenix/CSD to that path")
        files = {"checkpoint": (self.params.checkpoint, "CSD checkpoint", where)}
        if self.params.model.endswith(".json"):
            files["model"] = (self.params.model, "open_clip model config",
                              f"write the JSON there, or name an architecture such as {CSD_MODEL}")
        return files

    def describe(self):
        return f"csd:{self.params.model}:last_layer_style:clip-eval-transform"

    def embed(self, images, ctx):
        style, transform = load_csd(self.params.model, stamp(self.params.checkpoint), ctx.device)
        return embed_batches(style, transform, images, ctx.device, ctx.mixed_precision, self.params.batch_size)
