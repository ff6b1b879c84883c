"""Small helpers shared by the real-image metrics."""

from __future__ import annotations

import numpy as np


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Return ``images`` if it is a uint8 N×H×W×3 array, else raise (a caller's programming error)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"{what} must be a uint8 array N×H×W×3, got {dtype} {shape}")
    return images


def wants_cuda(device: str) -> bool:
    """Whether a context device string names a CUDA device."""
    return str(device).startswith("cuda")


def embed_batches(forward, transform, images: np.ndarray, device: str, mixed_precision: str,
                  batch_size: int) -> np.ndarray:
    """Unit embeddings (float64) of uint8 images: ``transform`` (PIL image → C×H×W tensor) then ``forward``."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype is not None and wants_cuda(device))
    out = []
    with torch.inference_mode(), autocast:
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([transform(Image.fromarray(img)) for img in images[i:i + batch_size]]).to(device)
            out.append(F.normalize(forward(pixels).float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


class ContentMemo:
    """A bounded memo of per-image results keyed by (settings, image content): metrics that look at the same
    images (a distance and a recognition rate, FID and KID) compute each result once."""

    def __init__(self, size: int = 8192):
        from collections import OrderedDict

        self.size, self.items = size, OrderedDict()

    def get(self, settings: tuple, image: np.ndarray, compute):
        import hashlib

        key = (settings, image.shape, hashlib.sha1(np.ascontiguousarray(image)).hexdigest())
        if key not in self.items:
            self.items[key] = compute(image)
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[key]


def link_into(folder, name: str, source) -> None:
    """Make ``folder/name`` the file ``source`` (a symlink, or a copy where links are not allowed), atomically:
    a library that only loads weights from its own folder (deepface, clean-fid) then reads the user's file."""
    import os
    import shutil
    from pathlib import Path

    folder, source = Path(folder), Path(source).expanduser().resolve()
    target = folder / name
    if target.is_file() and target.resolve() == source:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(source)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
