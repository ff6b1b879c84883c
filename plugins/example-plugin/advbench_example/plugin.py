"""The toy plugin classes. A real plugin keeps this shape: a Params dataclass and one method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advbench.interfaces import Defense, Metric, ProtectedModel
from advbench.params import check, param


class NoiseDefense(Defense):
    """Adds seeded Gaussian noise (relative to each tensor's std) to the UNet weights; no constraint."""

    @dataclass(frozen=True)
    class Params:
        scale: float = param(0.01, "Noise std as a fraction of each tensor's std.")

        def __post_init__(self):
            check(self.scale >= 0, f"scale must be >= 0, got {self.scale}")

    def protect(self, model, publisher_data, ctx):
        import torch

        generator = torch.Generator().manual_seed(ctx.seed)
        with torch.no_grad():
            for _, tensor in sorted(model.unet.named_parameters()):
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.add_(noise.to(tensor.device) * tensor.std().nan_to_num(0.0) * self.params.scale)
        return ProtectedModel(model=model, info={"noise_scale": self.params.scale})


class BrightnessGap(Metric):
    """|mean brightness of generated images − mean brightness of references| in [0, 1]; lower is closer."""

    higher_is_better = False
    needs_references = True

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        return float(abs(np.asarray(images, float).mean() - np.asarray(references, float).mean()) / 255.0)
