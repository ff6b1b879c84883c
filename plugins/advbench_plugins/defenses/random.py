"""Random freezing: FreezeAsGuard's R-p baseline.

A seeded random share ``p`` of the UNet's tensors is frozen, with the same rounding and the same freeze-mask
constraint as FreezeAsGuard (see ``masking.top_mask``), so the only difference between the two is which
tensors are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from advbench.interfaces import Context, Defense, ProtectedModel, PublisherData
from advbench.params import check, param
from advbench_plugins.defenses.masking import frozen_parameter_share, top_mask


class RandomFreeze(Defense):
    """Random-p freezing (the R-p baseline of FreezeAsGuard): freeze a seeded random share p of UNet tensors."""

    @dataclass(frozen=True)
    class Params:
        p: float = param(0.3, "Freezing ratio in (0, 1): the share of tensors (or parameters) frozen.")
        unit: Literal["tensors", "parameters"] = param(
            "tensors", "Whether p counts UNet tensors (as in the paper) or parameters.")

        def __post_init__(self):
            check(0.0 < self.p < 1.0, f"p must be in (0, 1), got {self.p}")

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        sizes = {name: t.numel() for name, t in model.unet.named_parameters()}
        # One random score per tensor, drawn in sorted-name order so the choice depends only on the seed.
        rng = np.random.default_rng(ctx.seed)
        scores = dict(zip(sorted(sizes), rng.random(len(sizes)).tolist()))
        mask = top_mask(scores, sizes, self.params.p, self.params.unit)
        info = {"frozen_tensors": len(mask.frozen_names()), "total_tensors": len(sizes),
                "frozen_tensor_share": mask.ratio(), "frozen_parameter_share": frozen_parameter_share(mask, sizes)}
        return ProtectedModel(model=model, constraints=[mask], info=info)
