"""Image-to-reference similarity metrics whose networks load from local files (never downloaded).

The metrics of IMMA's evaluation and of style mimicry: each compares one class's generated images with the
class's held-out reference images, through a network read from local weight files.

- ``dino`` (this module): DINO ViT-S/16 image similarity, timm's ``vit_small_patch16_224.dino``.
- ``lpips`` (:mod:`.perceptual`): LPIPS perceptual distance through the ``lpips`` package.
- ``csd`` (:mod:`.csd`): CSD style similarity (Somepalli et al. 2024).

Aggregation, the same for all three (parameter ``reduce``): a matrix of values over every generated ×
reference pair, then per generated image ``pairs`` = the mean over the references (default: DreamBooth's and
IMMA's "average pairwise similarity"), ``nearest`` = the best reference (max similarity, min distance), or for
the embedding metrics ``mean`` = cosine to the normalised mean reference embedding (the class prototype); the
score is the mean over the generated images.

Weights: a missing file is refused before any work (``check_domain``, which runs when a cell is validated),
naming the file and where to get it; a file whose keys or shapes do not fit the architecture is refused naming
the file (never loaded partially, which would leave random weights). ``fingerprint`` hashes the weight files.
See docs/metrics.md.
"""

from __future__ import annotations

import abc
import argparse
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from advbench.errors import DataError
from advbench.interfaces import Metric
from advbench.params import check, param

from ._common import check_images, embed_batches


# ---------------------------------------------------------------------------------------- weight files
def stamp(path: str) -> tuple[str, int, int]:
    """(resolved path, mtime_ns, size): a cache key that changes when the file does."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return str(p), st.st_mtime_ns, st.st_size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str, who: str) -> dict[str, Any]:
    """The tensors of a local checkpoint: ``.safetensors``, or a torch file read with ``weights_only=True``.

    A training checkpoint is unwrapped (its ``model_state_dict``, ``state_dict`` or ``model`` entry; CSD's
    also pickles its ``argparse.Namespace``, which is allowed) and DataParallel's ``module.`` prefix dropped.
    """
    import torch

    file = Path(path).expanduser()
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors and torch's unpickler raise many types for a bad file
        raise DataError(f"{who}: cannot read weights file {path}: {_first_line(exc)}") from None
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{who}: weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights(module, state: dict[str, Any], path: str, who: str, arch: str, assign: bool = False) -> None:
    """Load ``state`` into ``module`` exactly: every key of the module, nothing else, every shape equal.

    Otherwise raise a one-line DataError naming the file (a partial load would leave random weights). Floating
    tensors take the module's dtype; ``assign=True`` suits a module built on the meta device.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {what} ({_some(keys)})" for keys, what in
                 ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "keys of another shape"))
                 if keys]
        raise DataError(f"{who}: weights file {path} does not fit {arch}: {'; '.join(parts)}")
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


# ------------------------------------------------------------------------------------------- reduce
def reduce_pairs(values: np.ndarray, reduce: str, higher_is_better: bool) -> np.ndarray:
    """Per generated image (row), one value from its row of generated × reference values."""
    if reduce == "nearest":
        return values.max(1) if higher_is_better else values.min(1)
    return values.mean(1)


def cosine_matrix(generated: np.ndarray, references: np.ndarray, reduce: str) -> np.ndarray:
    """Cosine similarities of unit generated embeddings (N×D) with the references (M×D); ``mean``: with their
    normalised mean (N×1)."""
    if reduce == "mean":
        centre = references.mean(0)
        references = (centre / max(float(np.linalg.norm(centre)), 1e-12))[None]
    return generated @ references.T


# ------------------------------------------------------------------------------------------ metrics
class ReferenceSimilarity(Metric):
    """Base of the metrics that compare generated images with the class's references through a network read
    from local weight files. Subclasses name their files and compute the generated × reference matrix."""

    label: ClassVar[str] = ""  # the metric's name in messages (also when built without the registry)
    needs_references = True

    @abc.abstractmethod
    def weight_files(self) -> dict[str, tuple[str, str, str]]:
        """Parameter name → (path, what the file is, how to get it there)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The network and its preprocessing, as they join the fingerprint."""

    @abc.abstractmethod
    def pair_values(self, images: np.ndarray, references: np.ndarray, ctx) -> np.ndarray:
        """Generated × reference values (N×M; N×1 for ``reduce=mean``)."""

    def missing_file(self) -> str | None:
        """The one-line message for the first weight file that is not there, or None."""
        for key, (path, what, where) in self.weight_files().items():
            if not Path(path).expanduser().is_file():
                return (f"{self.label}: {what} {path} not found; {where} (or set {self.label}.{key}=PATH; folder "
                        f"domain: --domain-arg metric_args={self.label}.{key}=PATH)")
        return None

    def require_files(self) -> None:
        message = self.missing_file()
        if message:
            raise DataError(message)

    def check_domain(self, domain) -> str | None:
        return self.missing_file()  # refused when the cell is validated, before any work

    def fingerprint(self) -> str:
        from advbench.cache import file_sha256

        self.require_files()
        files = "|".join(f"{key}={file_sha256(Path(path).expanduser())}"
                         for key, (path, _, _) in sorted(self.weight_files().items()))
        return hashlib.sha256(f"{self.describe()}|{files}".encode()).hexdigest()

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        if not len(check_images(images)):
            raise ValueError(f"{self.label} needs at least one generated image")
        if references is None or not len(references):
            raise DataError(f"{self.label} needs reference images of class {cls!r}; none were given")
        references = check_images(references, "references")
        self.require_files()
        values = self.pair_values(images, references, ctx)
        return float(reduce_pairs(values, self.params.reduce, self.higher_is_better).mean())


class EmbeddingSimilarity(ReferenceSimilarity):
    """Cosine similarity of unit image embeddings (higher: closer to the class's references)."""

    higher_is_better = True

    @abc.abstractmethod
    def embed(self, images: np.ndarray, ctx) -> np.ndarray:
        """Unit embeddings (N×D float64) of uint8 images."""

    def pair_values(self, images, references, ctx):
        return cosine_matrix(self.embed(images, ctx), self.embed(references, ctx), self.params.reduce)


EmbeddingReduce = Literal["pairs", "nearest", "mean"]


def reduce_param() -> Any:
    """The ``reduce`` field of the embedding metrics' parameters."""
    return param("pairs", "Per generated image: mean cosine to every reference (DreamBooth/IMMA), to the nearest, "
                          "or to the references' mean embedding.")


def check_weights_params(params: Any, example: str) -> None:
    """The checks the embedding metrics' parameters share."""
    check(bool(params.model), f"model must name an architecture, e.g. {example}")
    check(bool(params.checkpoint), "checkpoint must be the path of a local checkpoint file")
    check(params.batch_size >= 1, "batch_size must be >= 1")


# --------------------------------------------------------------------------------------------- dino
DINO_MODEL = "vit_small_patch16_224.dino"
DINO_CHECKPOINT = "models/timm/vit_small_patch16_224.dino/model.safetensors"


@dataclass(frozen=True)
class DinoParams:
    model: str = param(DINO_MODEL, "timm architecture with its pretrained tag (the tag sets the preprocessing); "
                                   "built with pretrained=False, weights from checkpoint.")
    checkpoint: str = param(DINO_CHECKPOINT, "Local timm/DINO checkpoint of that architecture (.safetensors or "
                                             ".pth; no download).", path=True)
    reduce: EmbeddingReduce = reduce_param()
    batch_size: int = param(32, "Images per batch.")

    def __post_init__(self):
        check_weights_params(self, DINO_MODEL)


@functools.lru_cache(maxsize=2)
def load_timm(model: str, checkpoint: tuple[str, int, int], device: str, who: str = "dino"):
    """(timm model without classifier head in eval mode on ``device``, its eval transform), weights from the
    local ``checkpoint`` (a :func:`stamp`); the model's pretrained tag sets the transform (resize, crop, mean)."""
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        raise DataError(f"{who} needs timm: pip install timm") from None
    try:
        net = timm.create_model(model, pretrained=False, num_classes=0)  # never pretrained=True: no download
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"{who}: cannot build timm model {model!r}: {_first_line(exc)}; e.g. {DINO_MODEL}") from None
    load_weights(net, read_state_dict(checkpoint[0], who), checkpoint[0], who, f"timm model {model}")
    transform = create_transform(**resolve_data_config({}, model=net))
    return net.eval().to(device), transform


class DinoSimilarity(EmbeddingSimilarity):
    """Cosine similarity of DINO ViT-S/16 image embeddings of generated and reference images (higher better)."""

    measures = "similarity"
    label = "dino"
    Params = DinoParams

    def weight_files(self):
        p = self.params
        if p.model == DINO_MODEL:
            where = ("download model.safetensors of https://huggingface.co/timm/vit_small_patch16_224.dino (or "
                     "DINO's dino_deitsmall16_pretrain.pth from https://dl.fbaipublicfiles.com/dino/) to that path")
        else:
            where = f"put a timm checkpoint of {p.model} at that path"
        return {"checkpoint": (p.checkpoint, "DINO checkpoint", where)}

    def describe(self):
        return f"timm:{self.params.model}:cls-token:pretrained_cfg-transform"

    def embed(self, images, ctx):
        net, transform = load_timm(self.params.model, stamp(self.params.checkpoint), ctx.device)
        return embed_batches(net, transform, images, ctx.device, ctx.mixed_precision, self.params.batch_size)
