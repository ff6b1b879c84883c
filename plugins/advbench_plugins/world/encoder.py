"""The tiny world's defense-side image encoder: the image tower of the ``verifier`` (judges.ENCODERS).

The verifier is an ``align`` judge trained with another seed, so a defense that verifies with it (Dark Miner)
sees images the way the alignment judge does without ever touching the weights that score it. Torch is
imported only when images are encoded, so building a domain (``advbench list``, validation) stays light.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from advbench.interfaces import ImageEncoder

VERIFIER = "verifier"
# How images reach the tower (judges.to_tensor): bilinear resize to 32×32, then scaled to [-1, 1]. It joins the
# fingerprint, so a change of preprocessing never reuses a protect stage made with the old one.
PREPROCESS = "world-judge:resize32-bilinear:scale-1..1:l2"


class WorldEncoder(ImageEncoder):
    """Unit-norm embeddings of the verifier's image tower, loaded from ``folder`` (default: the shipped judges)."""

    def __init__(self, folder: str = ""):
        from advbench_plugins.world.build import judge_files

        self.folder = folder
        self.weights, _ = judge_files(VERIFIER, folder or None)  # a missing file: one line naming it and the fix

    def encode(self, images: np.ndarray) -> np.ndarray:
        from advbench_plugins.realmetrics._common import check_images
        from advbench_plugins.world.metrics import embed

        return embed(VERIFIER, check_images(images), self.folder).astype(np.float32, copy=False)

    def fingerprint(self) -> str:
        from advbench.cache import file_sha256

        return hashlib.sha256(f"{file_sha256(Path(self.weights))}|{PREPROCESS}".encode()).hexdigest()
