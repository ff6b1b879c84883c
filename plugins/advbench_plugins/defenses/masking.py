"""Turning per-tensor scores into a binary freeze mask with an exact freezing ratio.

Shared by FreezeAsGuard and random freezing so that the only difference between them is *which* tensors are
chosen: the same ratio ``p``, the same rounding, the same :class:`~advbench.interfaces.FreezeMask`.
"""

from __future__ import annotations

from typing import Literal

from advbench.interfaces import FreezeMask

Unit = Literal["tensors", "parameters"]


def top_mask(scores: dict[str, float], sizes: dict[str, int], p: float, unit: Unit = "tensors") -> FreezeMask:
    """Freeze the highest-scoring tensors.

    ``unit="tensors"`` (the FreezeAsGuard paper): exactly ``round(p * N)`` of the N tensors are frozen.
    ``unit="parameters"``: tensors are taken in score order until the frozen share of parameters first
    reaches ``round(p * total)``; ties in score are broken by name so the result is deterministic.
    """
    if set(scores) != set(sizes):
        raise ValueError("scores and sizes must name the same tensors")
    order = sorted(scores, key=lambda n: (-scores[n], n))
    frozen = dict.fromkeys(order, False)
    if unit == "tensors":
        for name in order[: round(p * len(order))]:
            frozen[name] = True
    else:
        target = round(p * sum(sizes.values()))
        total = 0
        for name in order:
            if total >= target:
                break
            frozen[name] = True
            total += sizes[name]
    return FreezeMask(frozen=frozen)


def frozen_parameter_share(mask: FreezeMask, sizes: dict[str, int]) -> float:
    """The share of parameters (not tensors) that ``mask`` freezes."""
    total = sum(sizes.values())
    return sum(sizes[n] for n, f in mask.frozen.items() if f) / max(total, 1)
