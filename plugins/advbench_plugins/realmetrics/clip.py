"""CLIP score on real images with an open_clip model loaded from a local checkpoint file (never downloaded).

``openclip-score`` = 100 · mean over images of max(cos(E_image(x_i), E_text(p_i)), 0), each image against the
prompt it was generated from (Hessel et al.'s CLIPScore with w = 100, as torchmetrics and diffusers' evaluation
guide compute it). Higher is better: the image follows its prompt more closely.

Weights: ``checkpoint`` is a local open_clip checkpoint (``.safetensors`` preferred; ``.bin``/``.pt`` are read
with ``weights_only=True``) for the architecture ``model`` — an open_clip architecture name (``ViT-B-32``) or
the path of an open_clip model-config JSON (registered under its file stem). The default is ViT-B-32 with
LAION-2B weights (laion2b_s34b_b79k) at ``models/open_clip/ViT-B-32/open_clip_model.safetensors``; a missing
file raises DataError saying what to download and where to put it. FreezeAsGuard's evaluation code (and
diffusers' guide) uses torchmetrics' CLIP score with OpenAI's ViT-B/16 or ViT-B/32; OpenAI weights work here as
``model=ViT-B-16-quickgelu`` (or ``ViT-B-32-quickgelu``) with the matching checkpoint.

Named ``openclip-score`` because ``clip-score`` is the tiny world's judge.

:class:`OpenClipEncoder` is open_clip's image tower as a defense-side encoder (the folder domain's
``defense_encoder`` parameter): loaded by the same offline code, from a checkpoint that must not be the one the
benchmark scores with.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advbench.errors import DataError
from advbench.interfaces import ImageEncoder, Metric
from advbench.params import check, param

from ._common import check_images, embed_batches, wants_cuda

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_CHECKPOINT = "models/open_clip/ViT-B-32/open_clip_model.safetensors"


def missing_message(model: str, checkpoint: str) -> str:
    """The one-line message for a missing checkpoint: what to download, where to put it, how to point at it."""
    if model == DEFAULT_MODEL:
        what = ("download open_clip_model.safetensors (or open_clip_pytorch_model.bin) of ViT-B-32 laion2b_s34b_b79k "
                "from https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    else:
        what = f"download an open_clip checkpoint of architecture {model}"
    return (f"openclip-score: CLIP checkpoint {checkpoint} not found; {what} to that path, "
            f"or set the metric parameters checkpoint=PATH model=ARCH")


def _check_config(model: str, who: str) -> Path | None:
    """The model-config JSON ``model`` names (None for an architecture name); a missing one is a DataError."""
    if not model.endswith(".json"):
        return None
    if not Path(model).is_file():
        raise DataError(f"{who}: model config {model} not found; pass an existing JSON file or an "
                        f"open_clip architecture name such as {DEFAULT_MODEL}")
    return Path(model)


def _architecture(model: str, who: str = "openclip-score") -> str:
    """The open_clip architecture name for ``model`` (a built-in name or a model-config JSON path); ``who`` (the
    metric or parameter that names it) starts every error message."""
    import open_clip

    if model.endswith(".json"):
        config = _check_config(model, who)
        open_clip.add_model_config(config)
        name = config.stem
    elif model in open_clip.list_models():
        name = model
    else:
        raise DataError(f"{who}: unknown open_clip architecture {model!r}; e.g. {DEFAULT_MODEL}, "
                        f"ViT-B-16-quickgelu, ViT-L-14 (see open_clip.list_models())")
    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    hub = [text[k] for k in ("hf_tokenizer_name", "hf_model_name") if text.get(k)]
    if hub:  # open_clip would fetch these from the Hugging Face hub when building the model or its tokenizer
        raise DataError(f"{who}: architecture {model} needs the Hugging Face model(s) {', '.join(hub)}, "
                        f"which advbench does not download; use an architecture with CLIP's own text tower, e.g. "
                        f"{DEFAULT_MODEL} or ViT-L-14")
    return name


@functools.lru_cache(maxsize=2)
def load_clip(model: str, checkpoint: str, device: str = "cpu", who: str = "openclip-score"):
    """(model in eval mode on ``device``, image preprocess, tokenizer) from local files only.

    ``who`` (the metric or parameter that names the checkpoint) starts every error message. Callers check that
    the checkpoint exists first, each saying what belongs there (the metric and an encoder want other files).
    """
    try:
        import open_clip
    except ImportError:
        raise DataError(f"{who} needs open_clip: pip install open_clip_torch") from None
    name = _architecture(model, who)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise DataError(f"{who}: open_clip checkpoint {checkpoint} not found")
    try:
        # An absolute path can never be mistaken for one of open_clip's pretrained tags (which would download).
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(path.resolve()),
                                                                    device=device, weights_only=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{who}: checkpoint {checkpoint} does not fit architecture {model}: {first}") from None
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except OSError as exc:  # e.g. a Hugging Face tokenizer that is not in the local cache
        raise DataError(f"{who}: the tokenizer of {model} is not available offline: {exc}") from None
    return clip.eval(), preprocess, tokenizer


def clip_scores(clip, preprocess, tokenizer, images: np.ndarray, prompts: list[str], device: str = "cpu",
                mixed_precision: str = "no", batch_size: int = 32) -> np.ndarray:
    """Per image, 100 · max(cos(image, its prompt), 0)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype is not None and wants_cuda(device))
    out = []
    with torch.inference_mode(), autocast:
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([preprocess(Image.fromarray(img)) for img in images[i:i + batch_size]]).to(device)
            tokens = tokenizer(list(prompts[i:i + batch_size])).to(device)
            img = F.normalize(clip.encode_image(pixels).float(), dim=-1)
            txt = F.normalize(clip.encode_text(tokens).float(), dim=-1)
            out.append((100 * (img * txt).sum(-1).clamp(min=0)).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@dataclass(frozen=True)
class OpenClipParams:
    model: str = param(DEFAULT_MODEL, "open_clip architecture name, or the path of an open_clip model-config JSON.")
    checkpoint: str = param(DEFAULT_CHECKPOINT, "Local open_clip checkpoint file for that architecture (no download).",
                            path=True)
    batch_size: int = param(32, "Images per CLIP batch.")

    def __post_init__(self):
        check(bool(self.model), "model must name an open_clip architecture, e.g. ViT-B-32")
        check(bool(self.checkpoint), "checkpoint must be the path of a local open_clip checkpoint file")
        check(self.batch_size >= 1, "batch_size must be >= 1")


class OpenClipScore(Metric):
    """CLIP score (100 · mean max(cos, 0)) of each image against its prompt, with a local open_clip model."""

    measures = "alignment"
    higher_is_better = True
    needs_references = False
    needs_prompts = True
    Params = OpenClipParams

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        images = check_images(images)
        if prompts is None or len(prompts) != len(images):
            raise ValueError(f"openclip-score needs one prompt per image: {len(images)} images, "
                             f"{0 if prompts is None else len(prompts)} prompts")
        if not len(images):
            raise ValueError("openclip-score needs at least one generated image")
        if not Path(self.params.checkpoint).expanduser().is_file():
            raise DataError(missing_message(self.params.model, self.params.checkpoint))
        clip, preprocess, tokenizer = load_clip(self.params.model, self.params.checkpoint, ctx.device)
        scores = clip_scores(clip, preprocess, tokenizer, images, list(prompts), ctx.device, ctx.mixed_precision,
                             self.params.batch_size)
        return float(scores.mean())


class OpenClipEncoder(ImageEncoder):
    """Unit-norm image embeddings of open_clip's image tower, from a local checkpoint (never downloaded).

    The model loads on first use, on the CPU: the encoder interface has no device, and a plugin never picks one.
    """

    def __init__(self, model: str, checkpoint: str, who: str, fix: str, batch_size: int = 32):
        if not Path(checkpoint).expanduser().is_file():  # refused when the domain is checked, not mid-defense
            # no download hint: the checkpoint every guide names is the one openclip-score judges with
            raise DataError(f"{who}: open_clip checkpoint {checkpoint} not found; put a local checkpoint of "
                            f"architecture {model} there, other than the one openclip-score scores with, or {fix}")
        _check_config(model, who)
        self.model, self.checkpoint, self.who, self.batch_size = model, checkpoint, who, batch_size

    def encode(self, images: np.ndarray) -> np.ndarray:
        clip, preprocess, _ = load_clip(self.model, self.checkpoint, "cpu", self.who)
        images = check_images(images)
        if not len(images):
            return np.zeros((0, int(getattr(clip.visual, "output_dim", 0) or 0)), np.float32)
        return embed_batches(clip.encode_image, preprocess, images, "cpu", "no", self.batch_size).astype(np.float32)

    def fingerprint(self) -> str:
        from advbench.cache import file_sha256

        # The architecture (a config file: its content) and open_clip's preprocessing of it are part of what the
        # encoder computes, beside the weights.
        arch = file_sha256(self.model) if self.model.endswith(".json") else self.model
        tag = f"open_clip:{arch}:preprocess_val:l2"
        return hashlib.sha256(f"{file_sha256(Path(self.checkpoint).expanduser())}|{tag}".encode()).hexdigest()
