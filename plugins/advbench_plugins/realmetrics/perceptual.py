"""LPIPS perceptual distance (Zhang et al. 2018) through the ``lpips`` package, with local weights only.

``lpips`` = mean over generated images of their LPIPS distance to the class's reference images (``reduce``:
``pairs``, the mean over all references, default; ``nearest``, the closest one). Lower is better (closer to the
attacked class). IMMA's evaluation (its eval/eval.py) loads every image at 64×64 (``Resize((64, 64))``,
antialiased bilinear, no crop), pairs the i-th reference with the i-th generated image (it asserts equal
counts) and reports ``1 − mean LPIPS`` with AlexNet; the all-pairs mean here is the expectation of that
random pairing, defined for any counts. Report ``1 − lpips`` to compare with IMMA's tables.

Weights, both local files: the ImageNet backbone (``backbone``; torchvision's own checkpoint file, e.g.
``alexnet-owt-7be5be79.pth``, whose ``features.*`` tensors fill the LPIPS slices; its ``classifier.*`` tensors
are ignored) and the calibrated linear layers (``linear``; default: the v0.1 file the ``lpips`` wheel ships).
``lpips.LPIPS`` is built with ``pnet_rand=True, pretrained=False``, so it never asks torchvision to download.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from advbench.errors import DataError
from advbench.params import check, param

from .similarity import ReferenceSimilarity, load_weights, read_state_dict, stamp

# net → (torchvision's checkpoint file name, the architecture's name)
BACKBONES = {"alex": ("alexnet-owt-7be5be79.pth", "AlexNet"), "vgg": ("vgg16-397923af.pth", "VGG-16"),
             "squeeze": ("squeezenet1_1-b8a52dc0.pth", "SqueezeNet 1.1")}
BACKBONE_DIR = "models/torchvision"


def shipped_linear(net: str) -> str:
    """The v0.1 linear-layer weights of ``net`` inside the installed ``lpips`` package (found without importing
    it: importing lpips imports torch)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("lpips needs the lpips package: pip install lpips")
    return str(Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth")


@dataclass(frozen=True)
class LpipsParams:
    net: Literal["alex", "vgg", "squeeze"] = param("alex", "LPIPS backbone (IMMA and LPIPS's default: alex).")
    backbone: str = param("", f"Local torchvision ImageNet checkpoint of that backbone (empty: {BACKBONE_DIR}/"
                              f"<torchvision's file name>, e.g. {BACKBONES['alex'][0]}).", path=True)
    linear: str = param("", "Local LPIPS linear-layer weights (empty: the v0.1 file the lpips wheel ships).",
                        path=True)
    size: int = param(64, "Both image sets are resized to size×size before LPIPS (IMMA: 64; LPIPS's patches).")
    reduce: Literal["pairs", "nearest"] = param(
        "pairs", "Per generated image: mean distance to every reference, or to the nearest.")
    batch_size: int = param(64, "Image pairs per batch.")

    def __post_init__(self):
        check(32 <= self.size <= 1024, "size must be between 32 and 1024 (the backbones need at least 32 pixels)")
        check(self.batch_size >= 1, "batch_size must be >= 1")


def backbone_state(state: dict, net) -> dict:
    """torchvision's ``features.<i>.<rest>`` keys renamed to the LPIPS slice that holds ``features[i]``
    (``slice<k>.<i>.<rest>``); ``classifier.*`` dropped; any other key kept, to be refused as unexpected."""
    where = {}
    for key in net.state_dict():  # "slice2.3.weight", "slice4.8.squeeze.weight"
        _, index, rest = key.split(".", 2)
        where[f"features.{index}.{rest}"] = key
    return {where.get(k, k): v for k, v in state.items() if not k.startswith("classifier.")}


@functools.lru_cache(maxsize=2)
def load_lpips(net: str, backbone: tuple[str, int, int], linear: tuple[str, int, int], device: str):
    """``lpips.LPIPS`` in eval mode on ``device`` with the backbone and linear layers of local files (:func:`stamp`
    keys, so a changed file is read again)."""
    import warnings

    import torch

    try:
        import lpips
    except ImportError:
        raise DataError("lpips needs the lpips package: pip install lpips") from None
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    name = BACKBONES[net][1]
    load_weights(model.net, backbone_state(read_state_dict(backbone[0], "lpips"), model.net), backbone[0],
                 "lpips", f"the {name} backbone (torchvision's features.* tensors)")
    lins = torch.nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(model.lins)})  # the file's key names
    load_weights(lins, read_state_dict(linear[0], "lpips"), linear[0], "lpips", f"LPIPS {net} linear layers")
    return model.eval().to(device)


def to_lpips_input(images: np.ndarray, size: int):
    """uint8 N×H×W×3 → float N×3×size×size in [-1, 1] (PIL's antialiased bilinear resize, as IMMA's loader)."""
    import torch
    from PIL import Image

    resized = np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)) for img in images])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class LpipsDistance(ReferenceSimilarity):
    """Mean LPIPS distance of generated images to the class's reference images (lower is better)."""

    measures = "similarity"
    label = "lpips"
    higher_is_better = False
    Params = LpipsParams

    def _backbone(self) -> str:
        return self.params.backbone or f"{BACKBONE_DIR}/{BACKBONES[self.params.net][0]}"

    def _linear(self) -> str:
        return self.params.linear or shipped_linear(self.params.net)

    def weight_files(self):
        file, name = BACKBONES[self.params.net]
        where = (f"download https://download.pytorch.org/models/{file} (torchvision's ImageNet {name}; "
                 f"torchvision caches it as ~/.cache/torch/hub/checkpoints/{file}) to that path")
        linear = "reinstall lpips (pip install lpips), whose wheel ships them, or put LPIPS linear layers there"
        return {"backbone": (self._backbone(), f"{name} backbone weights", where),
                "linear": (self._linear(), "LPIPS linear-layer weights", linear)}

    def describe(self):
        return f"lpips:v0.1:{self.params.net}:bilinear{self.params.size}"

    def pair_values(self, images, references, ctx):
        import torch

        model = load_lpips(self.params.net, stamp(self._backbone()), stamp(self._linear()), ctx.device)
        gen, ref = to_lpips_input(images, self.params.size), to_lpips_input(references, self.params.size)
        rows, cols = np.divmod(np.arange(len(gen) * len(ref)), len(ref))
        out = []
        with torch.inference_mode():
            for i in range(0, len(rows), self.params.batch_size):
                r, c = rows[i:i + self.params.batch_size], cols[i:i + self.params.batch_size]
                out.append(model(gen[r].to(ctx.device), ref[c].to(ctx.device)).flatten().float().cpu().numpy())
        return np.concatenate(out).astype(np.float64).reshape(len(gen), len(ref))
