"""Leaderboards built only from result records: tables, mitigation power, legal impact, regression check.

One row per (domain, defense, attack, threat model), aggregated over seeds. Mitigation power and legal impact
are relative degradations of the primary metric against the undefended baseline (defense ``none``) under the
same attack, threat model and seed; see ``docs/definitions.md`` for the formulas and their directions.
Records with an anytime curve (schema 2) are also scored at every budget against the baseline at the same budget;
the curve maths (MP-AUC, delay factors, selectivity) lives in :mod:`advbench.curves`, the plots in
:mod:`advbench.plots`. This module never imports torch.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advbench.curves import (Bounded, curve_summary, format_delay, mp_auc, record_before, record_curve,
                             relative_degradation)
from advbench.cells import domain_key, row_threat
from advbench.errors import DataError
from advbench.intervals import COLUMNS as INTERVALS
from advbench.intervals import row_intervals
from advbench.numerics import check_comparable
from advbench.safeio import atomic_write

KEYS = ["domain", "defense", "attack", "threat_model"]
BASELINE = "none"
ROLES = ("illegal", "legal")
SUMMARY = ["mitigation_power_mean", "mitigation_power_std", "legal_impact_mean", "legal_impact_std"]
CURVE = ["budgets", "mp_auc_mean", "mp_auc_std", "ref_budget", "legal_ref_budget", "illegal_delay",
         "illegal_delay_bound", "legal_delay", "legal_delay_bound", "selectivity", "selectivity_bound"]
SCORES = (("illegal", "mitigation_power"), ("legal", "legal_impact"))


def _key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    cell = rec["cell"]
    return domain_key(cell), cell["defense"]["label"], cell["attack"]["label"], row_threat(cell)


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


def _reference(same: dict[str, Any] | None, others: list[dict[str, Any]], role: str, primary: str) -> float:
    """The baseline's mean of ``primary`` over ``role``: the same seed's when present, else the mean over the
    baseline's seeds (``others``); NaN without any."""
    if same is not None:
        return same[role].get(primary, float("nan"))
    refs = [o[role].get(primary, float("nan")) for o in others]
    return float(np.mean(refs)) if refs else float("nan")


def score_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per record: its row key, seed, primary metric, mitigation power, legal impact and baseline matching.

    ``matched`` is True when the baseline cell with the same seed exists, False when the mean over the baseline's
    seeds was used instead, None when there is no baseline at all (then both values are NaN). ``curve`` repeats
    the scores at every budget of the record's anytime curve (:func:`advbench.curves.record_curve`), each against
    the baseline at the same budget (same seed, else the seed mean of the baseline cells that have that budget),
    with the primary metric's ``illegal``/``legal`` means; ``mp_auc`` is the mean of that MP over log-budget.
    """
    records = _unique(records)
    check_comparable(records, lambda rec: domain_key(rec["cell"]))
    directions = _directions(records)
    baselines: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        if rec["cell"]["defense"]["name"] == BASELINE:
            group = (domain_key(rec["cell"]), rec["cell"]["attack"]["label"], row_threat(rec["cell"]))
            seed = rec["cell"]["seed"]
            if seed in baselines[group]:
                raise DataError(f"two '{BASELINE}' baselines for {group[0]} | {group[1]} | {group[2]}, seed {seed} "
                                f"(cells {baselines[group][seed]['cell_id']} and {rec['cell_id']}); "
                                "keep one of them in the results file")
            baselines[group][seed] = rec
    base_curves = {group: {seed: {e["budget"]: e for e in record_curve(b)} for seed, b in seeds.items()}
                   for group, seeds in baselines.items()}
    out = []
    for rec in records:
        cell, metrics = rec["cell"], rec["metrics"]
        primary, hib, seed = metrics["primary"], directions[metrics["primary"]], cell["seed"]
        group = (domain_key(cell), cell["attack"]["label"], row_threat(cell))
        base_seeds, seed_curves = baselines.get(group, {}), base_curves.get(group, {})
        base = base_seeds.get(seed)
        others = [b["metrics"] for b in base_seeds.values()]
        scores = {column: relative_degradation(_reference(base and base["metrics"], others, role, primary),
                                               metrics[role].get(primary, float("nan")), hib)
                  for role, column in SCORES}
        curve = []
        for entry in record_curve(rec):
            budget = entry["budget"]
            same = seed_curves.get(seed, {}).get(budget)
            at_budget = [c[budget] for c in seed_curves.values() if budget in c]
            point: dict[str, Any] = {"budget": budget}
            for role, column in SCORES:
                point[role] = entry[role].get(primary, float("nan"))
                point[column] = relative_degradation(_reference(same, at_budget, role, primary), point[role], hib)
            curve.append(point)
        matched = None if not base_seeds else base is not None
        out.append({"key": _key(rec), "group": group, "seed": seed, "primary": primary, "matched": matched,
                    "record": rec, **scores, "curve": curve,
                    "mp_auc": mp_auc([p["budget"] for p in curve], [p["mitigation_power"] for p in curve])})
    return out


def _natural_key(label: str) -> tuple:
    """Sort key that compares digit runs as numbers ("steps=800" < "steps=1600")."""
    # Splitting on a captured group puts text at even positions and numbers at odd ones, so tuples compare
    # text with text and numbers with numbers.
    return tuple(float(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", label)))


def _budget_text(budget: float) -> str:
    return str(int(budget)) if float(budget).is_integer() else f"{budget:g}"


def _seed_mean(items: list[dict[str, Any]], role: str) -> dict[float, float]:
    """{budget: mean over the items that have that budget of the primary metric's ``role`` mean}."""
    values: dict[float, list[float]] = defaultdict(list)
    for item in items:
        for point in item["curve"]:
            values[point["budget"]].append(point[role])
    return {budget: float(np.mean(v)) for budget, v in values.items()}


def _curve_columns(key: tuple, items: list[dict[str, Any]], base_items: list[dict[str, Any]],
                   higher_is_better: bool) -> dict[str, Any]:
    """A row's anytime-curve columns: budgets, MP/LI per budget, MP-AUC, delays and selectivity (see CURVE)."""
    budgets = [p["budget"] for p in items[0]["curve"]]
    for item in items[1:]:
        other = [p["budget"] for p in item["curve"]]
        if other != budgets:
            raise DataError(f"'{_label(key)}' has records with different budgets ({budgets} and {other}); "
                            "run every seed of a row with the same budgets or keep them in separate results files")
    row: dict[str, Any] = {"budgets": ",".join(_budget_text(b) for b in budgets if b is not None)}
    row["mp_auc_mean"], row["mp_auc_std"] = _mean_std([i["mp_auc"] for i in items])
    for i, budget in enumerate(budgets):
        for column in ("mitigation_power", "legal_impact") if budget is not None else ():
            name = f"{column}_b{_budget_text(budget)}"
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([item["curve"][i][column] for item in items])
    defended = items[0]["record"]["cell"]["defense"]["name"] != BASELINE
    if defended and base_items and len(budgets) > 1:
        starts = [record_before(i["record"]) for i in base_items]
        start = {role: float(np.mean(v)) if None not in (v := [s[role] for s in starts]) else None
                 for role in ROLES}
        summary = curve_summary(None, _seed_mean(base_items, "illegal"), _seed_mean(items, "illegal"),
                                _seed_mean(base_items, "legal"), _seed_mean(items, "legal"), higher_is_better,
                                starts=start)
    else:
        summary = curve_summary(None, {}, {}, {}, {}, higher_is_better)  # everything undefined
    row["ref_budget"], row["legal_ref_budget"] = summary["ref_budget"], summary["legal_ref_budget"]
    for column in ("illegal_delay", "legal_delay", "selectivity"):
        row[column], row[f"{column}_bound"] = summary[column].value, summary[column].bound
    return row


def build_leaderboard(records: list[dict[str, Any]], intervals: str = "worst-case") -> pd.DataFrame:
    """One row per (domain, defense, attack, threat model): illegal/legal metric values and the two scores.

    ``adversary`` names a worst-case row's winning adversaries (:mod:`advbench.worstcase`). ``intervals``:
    which defended rows get 95 % bootstrap intervals (:mod:`advbench.intervals`, ``INTERVALS`` columns): those of
    worst-case rows (the default), ``all`` rows (slower: about half a second per row) or ``none``.

    Values are mean and std (ddof=1) over seeds. ``df.attrs["higher_is_better"]`` keeps each metric's direction.
    The scores are those of the final budget; the ``CURVE`` columns and ``mitigation_power_b{B}_mean``/``_std``,
    ``legal_impact_b{B}_mean``/``_std`` for every budget B in the file describe the anytime curves (definitions
    in ``docs/definitions.md``). Rows whose seeds were run at different budgets are a :class:`DataError`.
    """
    if intervals not in ("worst-case", "all", "none"):
        raise ValueError(f"intervals must be worst-case, all or none, not {intervals!r}")
    scored = score_records(records)
    directions = _directions(records)
    names: list[str] = []
    for item in scored:  # primary metrics first, then the others in order of appearance
        for name in [item["primary"], *item["record"]["metrics"]["higher_is_better"]]:
            if name not in names:
                names.append(name)
    names.sort(key=lambda n: n not in {i["primary"] for i in scored})
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    base_groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for item in scored:
        groups[item["key"]].append(item)
        if item["record"]["cell"]["defense"]["name"] == BASELINE:
            base_groups[item["group"]].append(item)
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
        base_items = base_groups.get(items[0]["group"], [])
        row.update(_curve_columns(key, items, base_items, directions[row["primary_metric"]]))
        adversaries = sorted({i["record"]["cell"]["adversary"]["id"] for i in items if "adversary" in i["record"]["cell"]})
        row["adversary"] = ", ".join(adversaries)
        wanted = intervals == "all" or (intervals == "worst-case" and adversaries)
        if wanted and items[0]["record"]["cell"]["defense"]["name"] != BASELINE:
            by_seed = {b["seed"]: b["record"] for b in base_items}
            pairs = [(i["record"], by_seed[i["seed"]]) for i in sorted(items, key=lambda i: i["seed"])
                     if i["seed"] in by_seed]
            row.update(row_intervals(pairs, row["primary_metric"], directions[row["primary_metric"]]))
        rows.append(row)
    metric_cols = [f"{role}_{n}_{stat}" for n in names for role in ROLES for stat in ("mean", "std")]
    budgets = sorted({p["budget"] for i in scored for p in i["curve"] if p["budget"] is not None})
    budget_cols = [f"{column}_b{_budget_text(b)}_{stat}" for b in budgets
                   for column in ("mitigation_power", "legal_impact") for stat in ("mean", "std")]
    columns = [*KEYS, "n_seeds", "primary_metric", *metric_cols, *SUMMARY, "baseline_matched", *CURVE, *budget_cols,
               "adversary", *INTERVALS]
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


def to_csv(df: pd.DataFrame, path: str | Path | None = None) -> str:
    """The leaderboard as CSV text (full precision); also written atomically to ``path`` when given."""
    text = df.to_csv(index=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), text.encode())
    return text


def _metric_names(df: pd.DataFrame) -> list[str]:
    return [c[len("illegal_"):-len("_mean")] for c in df.columns if c.startswith("illegal_") and c.endswith("_mean")]


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3g} ± {std:.3g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


DEFINITIONS = "../docs/definitions.md"  # relative to leaderboards/, where the Markdown is kept
CURVE_LEGEND = (
    ("MP @B", "mitigation-power-per-budget", "mitigation power when the attack stopped after B optimizer steps, each "
     "seed against the undefended cell of the same seed at the same budget; mean over seeds (std in the CSV)."),
    ("MP-AUC", "mp-auc", "the mean of mitigation power over log-budget (trapezoid rule), mean ± std over seeds; "
     "higher is better for the defense."),
    ("illegal delay", "delay-factor", "how many times the undefended reference budget the attacker needs to reach "
     "the undefended forgery quality (seed-mean curves); `> x`: not reached within the budgets run, `≤ x`: "
     "reached at the first budget; higher is better."),
    ("legal delay", "delay-factor", "the same for honest fine-tuning on the legal classes; near 1 is best."),
    ("selectivity", "selectivity", "illegal delay ÷ legal delay; above 1 means the defense slows forgery more than "
     "honest fine-tuning."),
    ("legal impact", "relative-degradation", "legal impact at the final budget, mean ± std over seeds."),
)


def _has_curves(part: pd.DataFrame) -> bool:
    return "budgets" in part.columns and part["budgets"].fillna("").astype(str).str.contains(",").any()


def _curve_table(part: pd.DataFrame) -> list[str]:
    """Markdown lines of a domain's anytime-curve table (MP per budget, MP-AUC, delays, selectivity, LI)."""
    budgets = sorted({float(b) for text in part["budgets"].fillna("").astype(str) for b in text.split(",") if b})
    budget_names = [_budget_text(b) for b in budgets]
    header = ["defense", "attack", "threat model", "seeds", *(f"MP @{b}" for b in budget_names), "MP-AUC",
              "illegal delay", "legal delay", "selectivity", "legal impact"]
    lines = ["Anytime attack curves (budget = optimizer steps; columns explained in the legend above):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in part.iterrows():
        cells = [row["defense"], row["attack"], row["threat_model"], row["n_seeds"]]
        for b in budget_names:
            value = row.get(f"mitigation_power_b{b}_mean", float("nan"))
            cells.append("n/a" if pd.isna(value) else f"{value:.3g}")
        cells.append(_fmt(row["mp_auc_mean"], row["mp_auc_std"]))
        for column in ("illegal_delay", "legal_delay", "selectivity"):
            bound = row[f"{column}_bound"]
            cells.append(format_delay(Bounded(float(row[column]), "" if pd.isna(bound) else str(bound))))
        cells.append(_fmt(row["legal_impact_mean"], row["legal_impact_std"]))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def to_markdown(df: pd.DataFrame) -> str:
    """The leaderboard as Markdown: one section per domain, "mean ± std" cells (3 significant digits).

    A domain with anytime curves (more than one budget) gets a curve table first, explained by a legend below the
    title (one sentence per column, linking ``docs/definitions.md``).
    """
    directions = df.attrs.get("higher_is_better", {})

    def arrow(name: str) -> str:
        return {True: " ↑", False: " ↓"}.get(directions.get(name), "")

    lines = ["# Leaderboard", "",
             "Generated by `advbench leaderboard` from the results records; do not edit by hand. "
             "Cells are mean ± std over seeds. **Mitigation power**: higher is better for the defense; "
             "**legal impact**: closer to 0 is better (see docs/definitions.md). Metric arrows: ↑ = higher "
             "values mean a better forgery/adaptation, ↓ = lower values do."]
    if _has_curves(df):
        lines += ["", "Anytime curve columns:", ""]
        lines += [f"- **{name}**: {text} ([definition]({DEFINITIONS}#{anchor}))" for name, anchor, text in CURVE_LEGEND]
    from advbench.headline import headline_lines

    headline = headline_lines(df)
    lines += ["", *headline] if headline else []
    for domain, part in df.groupby("domain", sort=False):
        names = [n for n in _metric_names(part)
                 if part[[f"illegal_{n}_mean", f"legal_{n}_mean"]].notna().any().any()]
        primaries = ", ".join(f"`{p}`{arrow(p)}" for p in part["primary_metric"].unique())
        lines += ["", f"## {domain}", "",
                  f"Primary metric: {primaries}. Metrics: " + ", ".join(f"`{n}`{arrow(n)}" for n in names) + ".", ""]
        if _has_curves(part):
            lines += _curve_table(part)
            lines += ["Final budget:", ""]
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
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    to_csv(df, csv_path)
    atomic_write(md_path, to_markdown(df).encode())
    return csv_path, md_path
