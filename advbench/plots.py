"""Leaderboard plots as PNG files: score bars, mitigation power vs a budget swept across cells, anytime curves.

Everything is drawn from result records or a leaderboard table (:mod:`advbench.leaderboard`) with matplotlib's Agg
backend through :func:`figure`/:func:`save` (atomic writes). This module never imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import io

import numpy as np
import pandas as pd

from advbench.cells import domain_key, row_threat
from advbench.curves import record_before
from advbench.errors import UserError
from advbench.leaderboard import BASELINE, _budget_text, _mean_std, score_records
from advbench.safeio import atomic_write


def figure(n_panels: int, width: float, height: float = 3.6, ncols: int = 1):
    """A figure of ``n_panels`` rows × ``ncols`` columns of axes (flat list, row by row)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * n_panels), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(n_panels, ncols, i + 1) for i in range(n_panels * ncols)]
    return fig, axes


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


def plot_budget_curves(records: list[dict[str, Any]], path: str | Path, budget_param: str = "steps") -> Path:
    """Mitigation power vs the attacker's budget (attack parameter ``budget_param``): one line per defense,
    one panel per domain, mean ± std over seeds as error bars. Writes a PNG and returns its path.

    This is for budgets swept across cells (one record per budget, schema 1); records that carry their own
    anytime curve are drawn by :func:`plot_curves`."""
    points: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for item in score_records(records):
        cell = item["record"]["cell"]
        budget = cell["attack"]["params"].get(budget_param)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            continue
        line = f"{cell['defense']['label']} ({cell['attack']['name']}, {cell['threat_model']})"
        points[domain_key(cell)][line][float(budget)].append(item["mitigation_power"])
    if not points:
        raise UserError(f"no attack in the results has a numeric parameter '{budget_param}'; "
                        "name another attack parameter as the budget")
    fig, axes = figure(len(points), 7.5)
    for ax, (domain, lines) in zip(axes, sorted(points.items())):
        for line, by_budget in sorted(lines.items()):
            xs = sorted(by_budget)
            stats = [_mean_std(by_budget[x]) for x in xs]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=line)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=domain, xlabel=f"attacker budget ({budget_param})", ylabel="mitigation power")
        ax.legend(fontsize="small")
    return save(fig, path)


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Anytime curves, one row of two panels per domain × attack (× threat model): mitigation power vs budget (one
    line per defense, mean ± std over seeds) and the primary metric vs budget (illegal classes solid, legal dashed,
    the undefended baseline in black, its value before any attack as a dotted line). A domain with no defended
    cells gets one row, its attacks as lines. Log-scaled budget axes. Writes a PNG and returns its path.

    Only records with more than one budget are drawn; none is a :class:`UserError`."""
    # (domain, attack, threat) → defense line → budget → {"mitigation_power"/"illegal"/"legal": [per-seed values]}
    points: dict[tuple, dict[tuple, dict[float, dict[str, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    before: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    primaries: dict[tuple, set[str]] = defaultdict(set)
    items = [i for i in score_records(records) if len(i["curve"]) >= 2]
    defended_domains = {domain_key(i["record"]["cell"]) for i in items
                        if i["record"]["cell"]["defense"]["name"] != BASELINE}
    for item in items:
        cell = item["record"]["cell"]
        split = domain_key(cell) in defended_domains  # one row per attack, else the attacks are lines
        panel = (domain_key(cell), cell["attack"]["label"] if split else "", row_threat(cell))
        line = (cell["defense"]["name"] != BASELINE, cell["defense"]["label"] if split else
                f"{cell['defense']['label']} vs {cell['attack']['label']}")
        primaries[panel].add(item["primary"])
        for point in item["curve"]:
            for column in ("mitigation_power", "illegal", "legal"):
                points[panel][line][point["budget"]][column].append(point[column])
        if not line[0]:
            for role, value in record_before(item["record"]).items():
                if value is not None:
                    before[panel][role].append(value)
    if not points:
        raise UserError("no record in the results has an anytime curve (more than one budget); "
                        "rerun with a budget list, or plot a budget swept across cells with plot_budget_curves")
    from matplotlib import rcParams

    fig, axes = figure(len(points), 13.0, 3.8, ncols=2)
    colors = [c["color"] for c in rcParams["axes.prop_cycle"]]
    for row, (panel, lines) in enumerate(sorted(points.items())):
        ax_mp, ax_metric = axes[2 * row], axes[2 * row + 1]
        title = " | ".join(p for p in panel[:2] if p) + (f" | {panel[2]}" if len({p[2] for p in points}) > 1 else "")
        bases = sum(not line[0] for line in lines)
        for index, line in enumerate(sorted(lines)):  # the baseline (False) first
            defended, defense = line
            color = colors[(index - (bases == 1)) % len(colors)] if defended or bases > 1 else "black"
            xs = sorted(lines[line])
            stats = {c: [_mean_std(lines[line][x][c]) for x in xs] for c in ("mitigation_power", "illegal", "legal")}
            if defended:
                ax_mp.errorbar(xs, [m for m, _ in stats["mitigation_power"]],
                               yerr=[sd for _, sd in stats["mitigation_power"]], marker="o", capsize=3, color=color,
                               label=defense)
            for role, style in (("illegal", "-"), ("legal", "--")):
                means = [m for m, _ in stats[role]]
                if not np.isnan(means).all():
                    ax_metric.errorbar(xs, means, yerr=[sd for _, sd in stats[role]], marker="o", capsize=3,
                                       color=color, linestyle=style, label=f"{defense}, {role}")
        for role, style in (("illegal", "-"), ("legal", "--")):
            if before[panel][role]:
                ax_metric.axhline(float(np.mean(before[panel][role])), color="grey", linestyle=":", linewidth=1,
                                  label=f"before any attack, {role}" if role == "illegal" else None)
        ax_mp.axhline(0.0, color="grey", linewidth=0.8)
        if not ax_mp.get_legend_handles_labels()[0]:
            ax_mp.text(0.5, 0.5, "no defended cells", transform=ax_mp.transAxes, ha="center", color="grey")
        ax_mp.set(title=f"{title}: mitigation power ↑", xlabel="attack budget (optimizer steps)",
                  ylabel="mitigation power", xscale="log")
        metric = ", ".join(sorted(primaries[panel]))
        ax_metric.set(title=f"{title}: {metric} (illegal solid, legal dashed)",
                      xlabel="attack budget (optimizer steps)", ylabel=metric, xscale="log")
        ticks = sorted({budget for by_budget in lines.values() for budget in by_budget})
        for ax in (ax_mp, ax_metric):
            ax.set_xticks(ticks, [_budget_text(b) for b in ticks])
            ax.minorticks_off()
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    return save(fig, path)


def plot_leaderboard(df: pd.DataFrame, path: str | Path) -> Path:
    """Bars of mitigation power and legal impact (± std) per row, one panel per domain. Writes a PNG."""
    if df.empty:
        raise UserError("the leaderboard is empty; there is nothing to plot")
    domains = list(dict.fromkeys(df["domain"]))
    widest = max((df["domain"] == d).sum() for d in domains)
    fig, axes = figure(len(domains), max(6.0, 1.1 * widest + 2))
    for ax, domain in zip(axes, domains):
        part = df[df["domain"] == domain]
        x = np.arange(len(part))
        for offset, column, name in ((-0.2, "mitigation_power", "mitigation power ↑"),
                                     (0.2, "legal_impact", "legal impact (→ 0)")):
            ax.bar(x + offset, part[f"{column}_mean"].fillna(0.0), 0.4, yerr=part[f"{column}_std"].fillna(0.0),
                   capsize=3, label=name)
        ax.set_xticks(x, [f"{r.defense}\n{r.attack}\n{r.threat_model}" for r in part.itertuples()], fontsize="small")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=domain, ylabel="relative change of the primary metric")
        ax.legend(fontsize="small")
    return save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")
LINESTYLES = ("-", "--", "-.", ":")


def plot_sensitivity(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Per defense and domain (one panel each): mitigation power against the attacker's learning-rate multiplier,
    one line per attack ladder of the adversary suite, at the search's first rung (every adversary scored there
    against the defense and against no defense; :func:`advbench.headline.sensitivity_points`). None when the
    records hold no worst-case search."""
    from advbench.headline import sensitivity_points

    points = sensitivity_points(records)
    if not points:
        return None
    panels: dict[tuple, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        panels[(p["domain"], p["defense"], p["suite"], p["budget"])][p["ladder"]].append(
            (p["multiplier"], p["mitigation_power"]))
    # many ladders sit on the same values (MP 0 where the defense is undone): each ladder gets its own marker
    # and line style, the same in every panel, so lines drawn over each other stay visible
    names = sorted({ladder for ladders in panels.values() for ladder in ladders})
    styles = {name: (MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]) for i, name in enumerate(names)}
    fig, axes = figure(len(panels), 7.5, 3.2)
    for ax, ((domain, defense, suite, budget), ladders) in zip(axes, sorted(panels.items())):
        for ladder, xy in sorted(ladders.items()):
            xy.sort()
            marker, linestyle = styles[ladder]
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker=marker, linestyle=linestyle, markersize=5,
                    markerfacecolor="none", label=ladder)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate × the attack's default")
        ax.set_ylabel(f"MP @{budget} steps")
        ax.set_title(f"{domain} | {defense} vs each adversary of {suite}", fontsize=9)
        ax.legend(fontsize=7, ncols=2)
    return save(fig, path)
