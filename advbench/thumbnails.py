"""Thumbnail strips: a few generated images of a class, small enough to live inside a result record.

A record's numbers say how much a defense hurt the attacker; a glance at the images says what that means (a
face that lost its identity, a style turned to noise). The report and the human evaluation read them from the
record alone, so nothing but the results file has to be kept or shipped. A strip is one PNG, base64-encoded: the
first ``per_strip`` images side by side, each shrunk so its longer side is at most ``max_side`` pixels (never
enlarged), all the same size and without gaps, so a reader can cut it back into images knowing only the count.

This module imports only numpy and PIL: the CLI's report and leaderboard commands read records without torch.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

PER_STRIP = 4  # images per strip: enough to see variety, few enough to keep a record small
MAX_SIDE = 64  # pixels of an image's longer side in a strip


def _thumbnail_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(width, height) of an image shrunk so its longer side is at most ``max_side``; unchanged when it fits."""
    longer = max(height, width)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_strip(images: np.ndarray, per_strip: int = PER_STRIP, max_side: int = MAX_SIDE) -> str:
    """The first ``per_strip`` of ``images`` (uint8 N×H×W×3) as one horizontal strip: a base64 PNG.

    Images larger than ``max_side`` are shrunk with a Lanczos filter (an antialiased average, so a thumbnail
    shows the picture, not aliasing of its pixels); smaller ones are kept pixel for pixel.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 array N×H×W×3, got {images.dtype} {images.shape}")
    if per_strip < 1 or max_side < 1:
        raise ValueError(f"per_strip and max_side must be >= 1, got {per_strip} and {max_side}")
    height, width = images.shape[1:3]
    size = _thumbnail_size(height, width, max_side)
    tiles = []
    for image in images[:per_strip]:
        tile = Image.fromarray(np.ascontiguousarray(image), "RGB")
        if tile.size != size:
            tile = tile.resize(size, Image.Resampling.LANCZOS)
        tiles.append(np.asarray(tile))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, axis=1), "RGB").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_strip(b64: str) -> np.ndarray:
    """A strip written by :func:`encode_strip` as a uint8 H×W×3 array."""
    from PIL import Image

    try:
        data = base64.b64decode(b64, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(f"not a base64 PNG thumbnail strip: {exc}") from None


def split_strip(b64: str, count: int) -> list[np.ndarray]:
    """The ``count`` images of a strip, left to right (each H×(W/count)×3)."""
    strip = decode_strip(b64)
    width = strip.shape[1]
    if count < 1 or width % count:
        raise ValueError(f"a strip {width} pixels wide cannot hold {count} images of equal width")
    step = width // count
    return [strip[:, i * step:(i + 1) * step] for i in range(count)]


def class_thumbnails(role: str, prompt: str, after: np.ndarray, before: np.ndarray | None = None,
                     per_strip: int = PER_STRIP, max_side: int = MAX_SIDE,
                     reference: np.ndarray | None = None) -> dict[str, Any]:
    """One class's entry of a record's ``thumbnails.classes``: images at the final budget (``after``), of the
    protected model before any attack (``before``, None when the cell did not generate them) and the class's
    held-out reference images (``reference``: what the class really looks like, the yardstick a reader and a
    rater need for an identity or a style they do not know; None when not given)."""
    return {"role": role, "prompt": prompt,
            "before": None if before is None else encode_strip(before, per_strip, max_side),
            "after": encode_strip(after, per_strip, max_side),
            "reference": None if reference is None else encode_strip(reference, per_strip, max_side)}


def record_thumbnails(classes: dict[str, dict[str, Any]], per_strip: int = PER_STRIP,
                      max_side: int = MAX_SIDE) -> dict[str, Any]:
    """A record's ``thumbnails`` value from its classes' entries (:func:`class_thumbnails`)."""
    return {"max_side": max_side, "per_strip": per_strip, "classes": classes}
