"""FreezeAsGuard's artifacts: the mask by tensor name, a heatmap of what it freezes, and the learning curves.

Written into the protect stage's ``work_dir``:
- ``freeze_mask.json``: per UNet tensor name, whether it is frozen, its learned logit w and soft mask m, and its
  size (never a bare list in ``parameters()`` order);
- ``frozen_by_block.csv`` / ``frozen_by_block.png``: the frozen fraction of tensors per UNet block (rows) and
  kind of tensor (columns: resnet, self-attention, cross-attention, feed-forward, ...);
- ``mask_curves.csv`` / ``mask_curves.png``: per mask step the upper and lower losses and the achieved ratio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from advbench.interfaces import FreezeMask

KINDS = ("resnet", "self-attn", "cross-attn", "feed-forward", "attn other", "resample", "other")


def block_of(name: str) -> str:
    """The UNet block a tensor belongs to: ``down_blocks.1``, ``mid_block``, ``conv_in``, ..."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def kind_of(name: str) -> str:
    """The kind of tensor, from its diffusers name."""
    if ".attn1." in name:
        return "self-attn"
    if ".attn2." in name:
        return "cross-attn"
    if ".ff." in name:
        return "feed-forward"
    if ".attentions." in name:
        return "attn other"
    if ".resnets." in name:
        return "resnet"
    if "samplers." in name:
        return "resample"
    return "other"


def block_table(mask: FreezeMask, order: list[str]):
    """A pandas table (blocks × kinds) of frozen fractions, plus frozen/total counts per block."""
    import pandas as pd

    rows = [{"block": block_of(n), "kind": kind_of(n), "frozen": bool(mask.frozen[n])} for n in order]
    frame = pd.DataFrame(rows)
    blocks = list(dict.fromkeys(frame["block"]))  # UNet order: first appearance
    table = frame.pivot_table(index="block", columns="kind", values="frozen", aggfunc="mean")
    table = table.reindex(index=blocks, columns=[k for k in KINDS if k in set(frame["kind"])])
    counts = frame.groupby("block", sort=False)["frozen"].agg(["sum", "count"]).reindex(blocks)
    table["frozen_tensors"] = counts["sum"].astype(int)
    table["tensors"] = counts["count"].astype(int)
    return table


def frozen_by_block(table) -> dict[str, float]:
    """``{block: frozen fraction of its tensors}`` in UNet order, from :func:`block_table`: small enough for the
    record's ``defense_info``, so a report can draw the mask's heatmap from the results file alone."""
    return {str(block): round(int(row["frozen_tensors"]) / int(row["tensors"]), 6)
            for block, row in table.iterrows()}


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def plot_heatmap(table, path: Path, title: str) -> None:
    import numpy as np

    kinds = [c for c in table.columns if c in KINDS]
    values = table[kinds].to_numpy(dtype=float)
    figure = _canvas(1.3 + 1.1 * len(kinds), 1.2 + 0.38 * len(table))
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    labels = [f"{b} ({f}/{t})" for b, f, t in zip(table.index, table["frozen_tensors"], table["tensors"])]
    ax.set_yticks(range(len(table)), labels)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, label="frozen fraction of tensors")
    figure.tight_layout()
    figure.savefig(path)


def plot_curves(curves: list[dict[str, Any]], p: float, path: Path) -> None:
    steps = [r["mask_step"] for r in curves]
    figure = _canvas(11, 3.2)
    ax1, ax2, ax3 = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    ax1.plot(steps, [r["upper_loss"] for r in curves], "k-o", ms=3, label="upper (Eq. 5 + 6)")
    ax1.plot(steps, [r["illegal_loss"] for r in curves], "r--", label="L(illegal)")
    ax1.plot(steps, [r["legal_loss"] for r in curves], "g--", label="L(legal)")
    ax1.set_title("upper level", fontsize=9)
    ax2.plot(steps, [r["lower_loss"] for r in curves], "b-o", ms=3)
    ax2.set_title("lower level (mean over L steps, Eq. 7)", fontsize=9)
    ax3.plot(steps, [r["soft_ratio"] for r in curves], "m-o", ms=3, label="mean m")
    ax3.plot(steps, [r["hard_ratio"] for r in curves], "c-s", ms=3, label="share m > 0.5")
    ax3.axhline(p, color="gray", ls=":", label=f"p = {p}")
    ax3.set_ylim(0, 1)
    ax3.set_title("achieved freezing ratio", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("mask step")
    ax1.legend(fontsize=7)
    ax3.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def write_all(folder: Path, mask: FreezeMask, result, sizes: dict[str, int], params: dict[str, Any]
              ) -> tuple[list[Path], dict[str, float]]:
    """Write every artifact into ``folder``; returns their paths and :func:`frozen_by_block`."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: {"frozen": bool(mask.frozen[n]), "w": w, "m": m, "numel": int(sizes[n])}
               for n, w, m in zip(result.names, result.w, result.mask)}
    mask_file = folder / "freeze_mask.json"
    mask_file.write_text(json.dumps({"params": params, "frozen_tensors": len(mask.frozen_names()),
                                     "total_tensors": len(tensors), "tensors": tensors}, indent=1))
    table = block_table(mask, result.names)
    table_csv, heatmap = folder / "frozen_by_block.csv", folder / "frozen_by_block.png"
    table.to_csv(table_csv)
    plot_heatmap(table, heatmap, f"FreezeAsGuard: frozen fraction per UNet block "
                                 f"({len(mask.frozen_names())}/{len(tensors)} tensors)")
    curves_csv, curves_png = folder / "mask_curves.csv", folder / "mask_curves.png"
    pd.DataFrame(result.curves).to_csv(curves_csv, index=False)
    plot_curves(result.curves, float(params["p"]), curves_png)
    return [mask_file, table_csv, heatmap, curves_csv, curves_png], frozen_by_block(table)
