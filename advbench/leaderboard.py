"""Leaderboards built only from result records: tables, mitigation power, legal impact, regression check, plots.

One row per (domain, defense, attack, threat model), aggregated over seeds. Mitigation power and legal impact
are relative degradations of the primary metric against the undefended baseline (defense ``none``) under the
same attack, threat model and seed; see ``docs/definitions.md`` for the formulas and their directions.
This module never imports torch.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advbench.errors import DataError, UserError

KEYS = ["domain", "defense", "attack", "threat_model"]
BASELINE = "none"
ROLES = ("illegal", "legal")
SUMMARY = ["mitigation_power_mean", "mitigation_power_std", "legal_impact_mean", "legal_impact_std"]


def relative_degradation(baseline: float, value: float, higher_is_better: bool) -> float:
    """``s·(M_B − M_D)/|M_B|`` with ``s = +1`` if higher is better, else −1; NaN when ``M_B`` is 0 or not finite."""
    if not (math.isfinite(baseline) and math.isfinite(value)) or baseline == 0:
        return float("nan")
    sign = 1.0 if higher_is_better else -1.0
    return sign * (baseline - value) / abs(baseline) + 0.0  # + 0.0 turns -0.0 into 0.0


def _key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    cell = rec["cell"]
    return cell["domain"]["name"], cell["defense"]["label"], cell["attack"]["label"], cell["threat_model"]


def _label(key: tuple[str, ...]) -> str:
    return f"{key[0]} | {key[1]} vs {key[2]} | {key[3]}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value); NaN if any value is NaN."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.isnan(arr).any():
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _directions(records: list[dict[str, Any]]) -> dict[str, bool]:
    directions: dict[str, bool] = {}
    for rec in records:
        for name, hib in rec["metrics"]["higher_is_better"].items():
            if directions.setdefault(name, hib) != hib:
                raise DataError(f"metric '{name}' is recorded both as higher-is-better and lower-is-better; "
                                "keep results of one metric version per file")
    return directions


def _unique(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated cell ids; two different cells with the same (row, seed) are ambiguous."""
    seen: dict[str, dict[str, Any]] = {}
    by_slot: dict[tuple, str] = {}
    for rec in records:
        if rec["cell_id"] in seen:
            continue
        slot = (*_key(rec), rec["cell"]["seed"])
        if slot in by_slot:
            raise DataError(f"cells {by_slot[slot]} and {rec['cell_id']} are both '{_label(slot)}', seed {slot[4]}, "
                            "but differ in configuration (model or parameters); give them distinct labels "
                            "or keep them in separate results files")
        by_slot[slot] = rec["cell_id"]
        seen[rec["cell_id"]] = rec
    return list(seen.values())


def score_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per record: its row key, seed, primary metric, mitigation power, legal impact and baseline matching.

    ``matched`` is True when the baseline cell with the same seed exists, False when the mean over the baseline's
    seeds was used instead, None when there is no baseline at all (then both values are NaN).
    """
    records = _unique(records)
    directions = _directions(records)
    baselines: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        if rec["cell"]["defense"]["name"] == BASELINE:
            group = (rec["cell"]["domain"]["name"], rec["cell"]["attack"]["label"], rec["cell"]["threat_model"])
            seed = rec["cell"]["seed"]
            if seed in baselines[group]:
                raise DataError(f"two '{BASELINE}' baselines for {group[0]} | {group[1]} | {group[2]}, seed {seed} "
                                f"(cells {baselines[group][seed]['cell_id']} and {rec['cell_id']}); "
                                "keep one of them in the results file")
            baselines[group][seed] = rec
    out = []
    for rec in records:
        cell, metrics = rec["cell"], rec["metrics"]
        primary = metrics["primary"]
        group = (cell["domain"]["name"], cell["attack"]["label"], cell["threat_model"])
        base_seeds = baselines.get(group, {})
        base = base_seeds.get(cell["seed"])
        scores = {}
        for role, column in (("illegal", "mitigation_power"), ("legal", "legal_impact")):
            value = metrics[role].get(primary, float("nan"))
            if base is not None:
                ref = base["metrics"][role].get(primary, float("nan"))
            else:
                refs = [b["metrics"][role].get(primary, float("nan")) for b in base_seeds.values()]
                ref = float(np.mean(refs)) if refs else float("nan")
            scores[column] = relative_degradation(ref, value, directions[primary])
        matched = None if not base_seeds else base is not None
        out.append({"key": _key(rec), "seed": cell["seed"], "primary": primary, "matched": matched,
                    "record": rec, **scores})
    return out


def _natural_key(label: str) -> tuple:
    """Sort key that compares digit runs as numbers ("steps=800" < "steps=1600")."""
    # Splitting on a captured group puts text at even positions and numbers at odd ones, so tuples compare
    # text with text and numbers with numbers.
    return tuple(float(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", label)))


def build_leaderboard(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (domain, defense, attack, threat model): illegal/legal metric values and the two scores.

    Values are mean and std (ddof=1) over seeds. ``df.attrs["higher_is_better"]`` keeps each metric's direction.
    """
    scored = score_records(records)
    directions = _directions(records)
    names: list[str] = []
    for item in scored:  # primary metrics first, then the others in order of appearance
        for name in [item["primary"], *item["record"]["metrics"]["higher_is_better"]]:
            if name not in names:
                names.append(name)
    names.sort(key=lambda n: n not in {i["primary"] for i in scored})
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for item in scored:
        groups[item["key"]].append(item)
    rows = []
    for key, items in groups.items():
        primaries = {i["primary"] for i in items}
        if len(primaries) > 1:
            raise DataError(f"'{_label(key)}' has records with different primary metrics {sorted(primaries)}; "
                            "keep one domain version per results file")
        row: dict[str, Any] = dict(zip(KEYS, key))
        row["n_seeds"] = len(items)
        row["primary_metric"] = items[0]["primary"]
        for name in names:
            for role in ROLES:
                present = [i["record"]["metrics"][role].get(name) for i in items]
                vals = [float("nan") if v is None else v for v in present]
                row[f"{role}_{name}_mean"], row[f"{role}_{name}_std"] = _mean_std(vals)
        for column in ("mitigation_power", "legal_impact"):
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std([i[column] for i in items])
        matched = [i["matched"] for i in items]
        row["baseline_matched"] = ("missing" if None in matched else "per-seed" if all(matched)
                                   else "seed-mean" if not any(matched) else "partial")
        rows.append(row)
    metric_cols = [f"{role}_{n}_{stat}" for n in names for role in ROLES for stat in ("mean", "std")]
    columns = [*KEYS, "n_seeds", "primary_metric", *metric_cols, *SUMMARY, "baseline_matched"]
    df = pd.DataFrame(rows, columns=columns)
    if len(df):
        # Numbers inside labels sort as numbers: fullft[steps=800] before fullft[steps=1600].
        order = {label: i for i, label in enumerate(sorted(df["attack"].unique(), key=_natural_key))}
        df["_attack_order"] = df["attack"].map(order)
        df = df.sort_values(["domain", "_attack_order", "threat_model", "mitigation_power_mean", "defense"],
                            ascending=[True, True, True, False, True], na_position="last", kind="mergesort")
        df = df.drop(columns="_attack_order")
    df = df.reset_index(drop=True)
    df.attrs["higher_is_better"] = {n: directions[n] for n in names}
    return df


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_csv(df: pd.DataFrame, path: str | Path | None = None) -> str:
    """The leaderboard as CSV text (full precision); also written atomically to ``path`` when given."""
    text = df.to_csv(index=False)
    if path is not None:
        _atomic_write(Path(path), text.encode())
    return text


def _metric_names(df: pd.DataFrame) -> list[str]:
    return [c[len("illegal_"):-len("_mean")] for c in df.columns if c.startswith("illegal_") and c.endswith("_mean")]


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3g} ± {std:.3g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def to_markdown(df: pd.DataFrame) -> str:
    """The leaderboard as Markdown: one section per domain, "mean ± std" cells (3 significant digits)."""
    directions = df.attrs.get("higher_is_better", {})

    def arrow(name: str) -> str:
        return {True: " ↑", False: " ↓"}.get(directions.get(name), "")

    lines = ["# Leaderboard", "",
             "Generated by `advbench leaderboard` from the results records; do not edit by hand. "
             "Cells are mean ± std over seeds. **Mitigation power**: higher is better for the defense; "
             "**legal impact**: closer to 0 is better (see docs/definitions.md). Metric arrows: ↑ = higher "
             "values mean a better forgery/adaptation, ↓ = lower values do."]
    for domain, part in df.groupby("domain", sort=False):
        names = [n for n in _metric_names(part)
                 if part[[f"illegal_{n}_mean", f"legal_{n}_mean"]].notna().any().any()]
        primaries = ", ".join(f"`{p}`{arrow(p)}" for p in part["primary_metric"].unique())
        lines += ["", f"## {domain}", "",
                  f"Primary metric: {primaries}. Metrics: " + ", ".join(f"`{n}`{arrow(n)}" for n in names) + ".", ""]
        header = ["defense", "attack", "threat model", "seeds", "mitigation power ↑", "legal impact (→ 0)"]
        for n in names:
            header += [f"illegal {n}{arrow(n)}", f"legal {n}{arrow(n)}"]
        header.append("baseline")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in part.iterrows():
            cells = [row["defense"], row["attack"], row["threat_model"], row["n_seeds"],
                     _fmt(row["mitigation_power_mean"], row["mitigation_power_std"]),
                     _fmt(row["legal_impact_mean"], row["legal_impact_std"])]
            for n in names:
                cells += [_fmt(row[f"illegal_{n}_mean"], row[f"illegal_{n}_std"]),
                          _fmt(row[f"legal_{n}_mean"], row[f"legal_{n}_std"])]
            cells.append(row["baseline_matched"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(df: pd.DataFrame, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<name>.md`` atomically; return both paths."""
    out = Path(out_dir)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    to_csv(df, csv_path)
    _atomic_write(md_path, to_markdown(df).encode())
    return csv_path, md_path


def _read_baseline(path: Path) -> pd.DataFrame:
    fix = "pass a CSV written by `advbench leaderboard --output-dir`"
    if not path.is_file():
        raise DataError(f"baseline leaderboard {path} not found; {fix}")
    try:
        base = pd.read_csv(path, dtype={k: str for k in KEYS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"baseline leaderboard {path} is not a readable CSV ({reason}); {fix}") from None
    missing = [c for c in [*KEYS, "mitigation_power_mean", "legal_impact_mean"] if c not in base.columns]
    if missing:
        raise DataError(f"baseline leaderboard {path} lacks columns {', '.join(missing)}; {fix}")
    for column in ("mitigation_power_mean", "legal_impact_mean"):
        numbers = pd.to_numeric(base[column], errors="coerce")
        if (numbers.isna() & base[column].notna()).any():
            raise DataError(f"baseline leaderboard {path}: column {column} holds non-numbers; {fix}")
        base[column] = numbers
    if base[KEYS].isna().any().any():
        raise DataError(f"baseline leaderboard {path} has rows with an empty {'/'.join(KEYS)} cell; {fix}")
    duplicated = base.duplicated(KEYS)
    if duplicated.any():
        key = tuple(base.loc[duplicated, KEYS].iloc[0])
        raise DataError(f"baseline leaderboard {path} lists '{_label(key)}' twice; {fix}")
    return base


def check_regressions(current_df: pd.DataFrame, baseline_csv_path: str | Path, tolerance: float = 0.05) -> list[str]:
    """Compare with a saved leaderboard CSV; one message per regression (an empty list means none).

    Every baseline row must be present; its mitigation power may not drop, nor its legal impact rise, by more
    than ``tolerance`` (absolute). A NaN score in the baseline is not checked.
    """
    if not (tolerance >= 0):
        raise UserError(f"tolerance must be a non-negative number, got {tolerance}")
    base = _read_baseline(Path(baseline_csv_path))
    current = {tuple(str(v) for v in row[KEYS]): row for _, row in current_df.iterrows()}
    slack = tolerance + 1e-9  # CSV round trips may move the last bit
    problems = []
    for _, brow in base.iterrows():
        key = tuple(brow[KEYS])
        label = _label(key)
        if key not in current:
            problems.append(f"{label}: in the baseline but missing from the current results")
            continue
        crow = current[key]
        for column, word, worse in (("mitigation_power_mean", "mitigation power", "dropped"),
                                    ("legal_impact_mean", "legal impact", "rose")):
            old, new = float(brow[column]), float(crow[column])
            if math.isnan(old):
                continue
            if math.isnan(new):
                problems.append(f"{label}: {word} cannot be computed now (baseline {old:.4g}); "
                                f"are the '{BASELINE}' cells missing?")
            elif (old - new if worse == "dropped" else new - old) > slack:
                problems.append(f"{label}: {word} {worse} from {old:.4g} to {new:.4g} "
                                f"(more than the tolerance {tolerance:g})")
    return problems


def _figure(n_panels: int, width: float, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * n_panels), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(n_panels, 1, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    _atomic_write(path, buffer.getvalue())
    return path


def plot_budget_curves(records: list[dict[str, Any]], path: str | Path, budget_param: str = "steps") -> Path:
    """Mitigation power vs the attacker's budget (attack parameter ``budget_param``): one line per defense,
    one panel per domain, mean ± std over seeds as error bars. Writes a PNG and returns its path."""
    points: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for item in score_records(records):
        cell = item["record"]["cell"]
        budget = cell["attack"]["params"].get(budget_param)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            continue
        line = f"{cell['defense']['label']} ({cell['attack']['name']}, {cell['threat_model']})"
        points[cell["domain"]["name"]][line][float(budget)].append(item["mitigation_power"])
    if not points:
        raise UserError(f"no attack in the results has a numeric parameter '{budget_param}'; "
                        "name another attack parameter as the budget")
    fig, axes = _figure(len(points), 7.5)
    for ax, (domain, lines) in zip(axes, sorted(points.items())):
        for line, by_budget in sorted(lines.items()):
            xs = sorted(by_budget)
            stats = [_mean_std(by_budget[x]) for x in xs]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=line)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=domain, xlabel=f"attacker budget ({budget_param})", ylabel="mitigation power")
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_leaderboard(df: pd.DataFrame, path: str | Path) -> Path:
    """Bars of mitigation power and legal impact (± std) per row, one panel per domain. Writes a PNG."""
    if df.empty:
        raise UserError("the leaderboard is empty; there is nothing to plot")
    domains = list(dict.fromkeys(df["domain"]))
    widest = max((df["domain"] == d).sum() for d in domains)
    fig, axes = _figure(len(domains), max(6.0, 1.1 * widest + 2))
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
    return _save(fig, path)
