"""The figures of the HTML report (``advbench report``), each returned as a ``data:image/png;base64,...`` URI.

Why PNG data URIs and not inline SVG: the report must be one file that opens anywhere without a network, and the
thumbnails it shows are PNGs already, so every image of the report is one kind of ``<img>``. matplotlib's SVG
draws every glyph as a path and gives each figure's clip paths and markers ids that are only unique within one
figure, so several inline SVGs in one page are larger and can collide; a PNG at 110 dpi is a few tens of kB and
looks the same in every browser. The numbers come from the leaderboard table (:func:`advbench.leaderboard.
build_leaderboard` via the standard leaderboard): no curve maths here. This module never imports torch.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from advbench.leaderboard import BASELINE, _budget_text
from advbench.plots import figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
DPI = 110


def data_uri(fig) -> str:
    """The figure as a PNG data URI (the figure is drawn once, here)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Styles:
    """One colour per defense label and one marker per attack label for the whole report, so a defense looks the
    same in every domain's Pareto plot and budget curves."""

    def __init__(self, defenses: list[str], attacks: list[str]):
        from matplotlib import colormaps

        palette = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](i) for i in range(1, 20, 2)]
        others = [d for d in dict.fromkeys(defenses) if d != BASELINE]
        self.colors = {d: palette[i % len(palette)] for i, d in enumerate(others)}
        self.colors[BASELINE] = (0.0, 0.0, 0.0, 1.0)  # the undefended baseline is black everywhere
        self.markers = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(dict.fromkeys(attacks))}

    def color(self, defense: str):
        return self.colors.get(defense, (0.5, 0.5, 0.5, 1.0))

    def marker(self, attack: str) -> str:
        return self.markers.get(attack, "o")


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _zero_if_nan(value: Any) -> float:
    return float(value) if _finite(value) else 0.0


def is_pareto(value: Any) -> bool:
    """The ``pareto`` column's truth (a bool, or a string such as ``"yes"``/``"True"`` after a CSV round trip)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "✓", "pareto")
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return False  # not ranked (the baseline, or a row without scores)
    return bool(value)


def _legends(ax, defenses: list[str], attacks: list[str], styles: Styles, extra: list | None = None) -> None:
    """Two legends: colour = defense, marker = attack (plus ``extra`` handles, e.g. the Pareto ring)."""
    from matplotlib.lines import Line2D

    colour_handles = [Line2D([], [], color=styles.color(d), marker="s", linestyle="", label=d) for d in defenses]
    first = ax.legend(handles=colour_handles, title="defense", fontsize="x-small", title_fontsize="x-small",
                      loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.add_artist(first)
    marker_handles = [Line2D([], [], color="dimgrey", marker=styles.marker(a), linestyle="", label=a)
                      for a in attacks] + (extra or [])
    ax.legend(handles=marker_handles, title="attack", fontsize="x-small", title_fontsize="x-small",
              loc="lower left", bbox_to_anchor=(1.01, 0.0), borderaxespad=0.0)


SCORE_NAMES = {"mp_auc_mean": "MP-AUC", "mitigation_power_mean": "MP at the final budget"}


def score_name(column: str) -> str:
    """A ranking score column in words: ``MP-AUC``, ``MP at the final budget``, ``MP at budget 100``."""
    if column in SCORE_NAMES:
        return SCORE_NAMES[column]
    return f"MP at budget {column[len('mitigation_power_b'):-len('_mean')]}"


def score_points(part: pd.DataFrame) -> list[dict[str, Any]]:
    """Per row of one domain, the point its Pareto flag was decided on: the standard leaderboard's ranking score
    (``y``: MP-AUC, MP at the final budget or at the largest shared budget) and the legal impact at the same
    budget (``x``), with their stds, from :func:`advbench.standard.score_columns` of the row's group (domain,
    attack, threat model). Baseline rows get the columns of their group's defended rows (both 0 by definition)."""
    from advbench.standard import GROUP, score_columns

    points = []
    for _, rows in part.groupby(GROUP, sort=False):
        defended = rows[rows["defense"] != BASELINE]
        mp_col, li_col = score_columns(defended if len(defended) else rows)
        for _, row in rows.iterrows():
            values = {k: row.get(c) for k, c in (("y", mp_col), ("yerr", mp_col[:-5] + "_std"), ("x", li_col),
                                                  ("xerr", li_col[:-5] + "_std"))}
            if _finite(values["x"]) and _finite(values["y"]):
                points.append({**{k: _zero_if_nan(v) for k, v in values.items()}, "score": mp_col,
                               "defense": row["defense"], "attack": row["attack"],
                               "threat_model": row["threat_model"], "pareto": is_pareto(row.get("pareto"))})
    return points


def pareto_plot(part: pd.DataFrame, title: str, styles: Styles) -> str | None:
    """Mitigation power (y) against legal impact (x) for one domain's rows: one point per defense configuration ×
    attack (× threat model; a second one hollow), error bars = std over seeds, the rows the table marks
    Pareto-optimal ringed. y is the score the table ranks and flags Pareto rows by (:func:`score_points`), so the
    rings are exactly the table's stars.

    None when no defended row has both values (a domain without an undefended baseline or without a defense)."""
    points = score_points(part)
    if not any(p["defense"] != BASELINE for p in points):
        return None
    from matplotlib.lines import Line2D

    fig, (ax,) = figure(1, 7.8, 4.2)
    threats = sorted({p["threat_model"] for p in points})
    for p in points:
        hollow = len(threats) > 1 and p["threat_model"] != threats[0]
        color = styles.color(p["defense"])
        ax.errorbar(p["x"], p["y"], xerr=p["xerr"], yerr=p["yerr"], marker=styles.marker(p["attack"]), markersize=7,
                    color=color, markerfacecolor="none" if hollow else color, capsize=3, linestyle="", zorder=3)
        if p["pareto"]:
            ax.plot(p["x"], p["y"], marker="o", markersize=16, markerfacecolor="none", markeredgecolor="goldenrod",
                    markeredgewidth=2.2, zorder=2)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    scores = list(dict.fromkeys(score_name(p["score"]) for p in points if p["defense"] != BASELINE))
    ax.set(title=f"{title}: mitigation power vs legal impact", xlabel="legal impact (→ 0 is best)",
           ylabel=f"mitigation power: {scores[0]} (↑ is best)" if len(scores) == 1 else
           "mitigation power (↑ is best)\n" + " or ".join(scores))
    extra = [Line2D([], [], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="goldenrod",
                    markeredgewidth=2.2, linestyle="", label="Pareto-optimal")]
    if len(threats) > 1:
        extra.append(Line2D([], [], marker="o", color="dimgrey", markerfacecolor="none", linestyle="",
                            label=f"hollow: {', '.join(threats[1:])}"))
    _legends(ax, list(dict.fromkeys(p["defense"] for p in points)), list(dict.fromkeys(p["attack"] for p in points)),
             styles, extra)
    return data_uri(fig)


def row_budgets(row: Any) -> list[float]:
    """The budgets of a leaderboard row (its ``budgets`` column, e.g. ``"25,50,100,200"``)."""
    text = row.get("budgets") if hasattr(row, "get") else None
    if not isinstance(text, str):
        return []
    return [float(b) for b in text.split(",") if b.strip()]


def budget_plot(part: pd.DataFrame, title: str, styles: Styles) -> str | None:
    """Mitigation power against the attack budget for one domain: one line per defense × attack (× threat model)
    from the table's ``mitigation_power_b{B}_mean``/``_std`` columns (error bars = std over seeds), log budget axis.

    None when no defended row of the domain was scored at more than one budget."""
    lines = [row for _, row in part.iterrows() if row["defense"] != BASELINE and len(row_budgets(row)) > 1]
    if not lines:
        return None
    fig, (ax,) = figure(1, 7.8, 4.0)
    threats = sorted({row["threat_model"] for row in lines})
    ticks: set[float] = set()
    for index, row in enumerate(lines):
        budgets = row_budgets(row)
        # Lines share their budgets; a small multiplicative offset (same on a log axis) keeps error bars apart.
        dodge = 1.0 + min(0.025, 0.15 / len(lines)) * (index - (len(lines) - 1) / 2)
        names = [f"mitigation_power_b{_budget_text(b)}" for b in budgets]
        means = [float(row.get(f"{n}_mean", float("nan"))) for n in names]
        stds = [_zero_if_nan(row.get(f"{n}_std")) for n in names]
        ticks.update(budgets)
        dashed = len(threats) > 1 and row["threat_model"] != threats[0]
        ax.errorbar([b * dodge for b in budgets], means, yerr=stds, marker=styles.marker(row["attack"]),
                    color=styles.color(row["defense"]), linestyle="--" if dashed else "-", capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(title=f"{title}: mitigation power vs attack budget", xlabel="attack budget (optimizer steps)",
           ylabel="mitigation power (↑ is best)", xscale="log")
    ax.set_xticks(sorted(ticks), [_budget_text(b) for b in sorted(ticks)])
    ax.minorticks_off()
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="dimgrey", linestyle="--", label=f"dashed: {', '.join(threats[1:])}")] \
        if len(threats) > 1 else []
    _legends(ax, list(dict.fromkeys(r["defense"] for r in lines)), list(dict.fromkeys(r["attack"] for r in lines)),
             styles, extra)
    return data_uri(fig)


def mask_heatmap(fractions: dict[str, dict[str, float]], title: str) -> str:
    """A heatmap of frozen fractions: one row per UNet block (first-appearance order), one column per source
    (``{"seed 0": {"down_blocks.0": 0.25, ...}, ...}``); each cell annotated with its value."""
    columns = list(fractions)
    blocks = list(dict.fromkeys(b for c in columns for b in fractions[c]))
    values = np.array([[fractions[c].get(b, float("nan")) for c in columns] for b in blocks], dtype=float)
    fig, (ax,) = figure(1, 2.6 + 0.9 * len(columns), 1.0 + 0.32 * len(blocks))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, fontsize="small")
    ax.set_yticks(range(len(blocks)), blocks, fontsize="small")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if math.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize="small")
    fig.colorbar(image, ax=ax, label="frozen fraction")
    return data_uri(fig)
