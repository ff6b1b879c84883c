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
