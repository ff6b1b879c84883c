"""Markdown of the standard leaderboard (:mod:`advbench.standard`): a legend, then one table per domain.

Kept apart from the table's maths so each file stays short; it only formats columns that
:func:`advbench.standard.build_standard` computed. Every column shown is defined in one sentence in the legend,
which links ``docs/definitions.md``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

DEFINITIONS = "../docs/definitions.md"  # relative to leaderboards/, where the Markdown is kept
FID_KID = re.compile(r"(^|[-_])(fid|kid)($|[-_])", re.IGNORECASE)


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number


def _fmt(mean: Any, std: Any = None) -> str:
    mean = _num(mean)
    if math.isnan(mean):
        return "n/a"
    std = _num(std)
    return f"{mean:.3g}" if std is None or math.isnan(std) else f"{mean:.3g} ± {std:.3g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def score_name(column: str) -> str:
    """``mp_auc_mean`` → ``MP-AUC``, ``mitigation_power_b200_mean`` → ``MP @200``, ``mitigation_power_mean`` → ``MP``."""
    if column == "mp_auc_mean":
        return "MP-AUC"
    match = re.fullmatch(r"mitigation_power_b(.+)_mean", column)
    return f"MP @{match.group(1)}" if match else ("MP" if column else "")


def _fid_kid(part: pd.DataFrame) -> list[str]:
    names = [c[len("illegal_"):-len("_mean")] for c in part.columns if c.startswith("illegal_") and c.endswith("_mean")]
    return [n for n in names if FID_KID.search(n) and part[[f"illegal_{n}_mean", f"legal_{n}_mean"]].notna().any().any()]


def _by_budget(row: pd.Series) -> str:
    budgets = [b for b in str(row.get("budgets") or "").split(",") if b]
    if len(budgets) < 2:
        return ""
    return " / ".join(_fmt(row.get(f"mitigation_power_b{b}_mean")) for b in budgets)


def _legend(metric_names: list[str], human: bool) -> list[str]:
    items = [
        ("rank", "rank", "competition rank (1, 2, 2, 4) of the defense among the defended rows of the same domain, "
         "attack and threat model by the score in *ranked by*, higher first; empty for the undefended baseline and "
         "for a score that is n/a."),
        ("ranked by", "rank", "the score that ranks the group: MP-AUC when all its rows have the same anytime curve, "
         "else MP at the final budget they share (`MP @B`)."),
        ("seeds", "rows", "the number of seeds (cells) averaged in the row; every ± is the standard deviation over "
         "them."),
        ("MP-AUC", "mp-auc", "mitigation power averaged over log-budget, mean ± std over seeds; higher is better "
         "for the defense."),
        ("MP", "relative-degradation", "mitigation power at the final budget: how much worse the attacker's forgery "
         "of the illegal classes is than against the undefended model; higher is better."),
        ("MP by budget", "mitigation-power-per-budget", "mean mitigation power at each budget of *budgets* "
         "(optimizer steps), in that order."),
        ("LI", "relative-degradation", "legal impact at the final budget: how much worse honest fine-tuning on the "
         "legal classes gets; 0 is no harm, negative means it got better."),
        ("Pareto", "pareto", "✓ when no other defense of the group has both a higher-or-equal ranking score and a "
         "lower-or-equal LI, one of them strictly; · when one has; empty when MP or LI is n/a."),
        ("illegal / legal primary", "rows", "the domain's primary metric (its name in the column title, ↑ higher "
         "or ↓ lower means a better forgery) over the illegal / legal classes at the final budget."),
    ]
    if metric_names:
        items.append(("illegal / legal FID, KID", "rows", "the distribution distances "
                      f"({', '.join(metric_names)}) between generated and reference images; lower is closer."))
    if human:
        items += [("human concept", "human-ratings", "mean ± std of human 1–7 ratings of how well the images show "
                   "the class concept (illegal, legal)."),
                  ("human quality", "human-ratings", "mean ± std of human 1–7 ratings of image quality (illegal, "
                   "legal)."),
                  ("raters", "human-ratings", "the number of distinct human raters (the larger of the two roles).")]
    items.append(("baseline", "seeds-and-baseline-matching", "how the undefended cells were matched to the seeds "
                  "(per-seed, partial, seed-mean, missing)."))
    lines = ["Columns:", ""]
    lines += [f"- **{name}**: {text} ([definition]({DEFINITIONS}#{anchor}))"
              for name, anchor, text in [(n, _anchor(a), t) for n, a, t in items]]
    return lines


def _anchor(anchor: str) -> str:
    return {"rank": "standard-leaderboard", "pareto": "standard-leaderboard",
            "human-ratings": "standard-leaderboard"}.get(anchor, anchor)


def _provenance_line(part: pd.DataFrame) -> str:
    def values(column: str) -> str:
        found = sorted({v for text in part.get(column, pd.Series(dtype=str)).fillna("").astype(str)
                        for v in text.split(";") if v})
        return ", ".join(f"`{v}`" for v in found) or "not recorded"

    return (f"Provenance: advbench {values('advbench_version')}; git {values('git_commits')}; domain version "
            f"{values('domain_version')}; base model {values('model_fingerprint')}; from {values('sources')}.")


def standard_markdown(df: pd.DataFrame) -> str:
    """Legend (one sentence per column, linking docs/definitions.md), then per domain its provenance and table."""
    directions = df.attrs.get("higher_is_better", {})
    arrow = lambda name: {True: " ↑", False: " ↓"}.get(directions.get(name), "")  # noqa: E731
    human = "human_raters" in df.columns and df["human_raters"].notna().any()
    fid_kid = _fid_kid(df)
    lines = ["# Standard leaderboard", "",
             "Generated by `advbench leaderboard merge` from the results files named under each domain; do not edit "
             "by hand. Rows are compared only within one domain, attack and threat model (the same undefended "
             "baseline); the CSV beside this file has every column at full precision (MP and LI at every budget, "
             "all metrics, provenance per row).", ""]
    lines += _legend(fid_kid, human)
    from advbench.headline import headline_lines

    headline = headline_lines(df)
    lines += ["", *headline] if headline else []
    for domain, part in df.groupby("domain", sort=False):
        primaries = list(dict.fromkeys(part["primary_metric"]))
        names = _fid_kid(part)
        lines += ["", f"## {domain}", "", _provenance_line(part), ""]
        header = ["rank", "defense", "attack", "threat model", "seeds", "ranked by", "MP-AUC", "MP", "MP by budget",
                  "budgets", "LI", "Pareto"]
        header += [f"{role} {p}{arrow(p)}" for p in primaries for role in ("illegal", "legal")]
        header += [f"{role} {n}{arrow(n)}" for n in names for role in ("illegal", "legal")]
        if human:
            header += ["human concept (illegal)", "human concept (legal)", "human quality (illegal)",
                       "human quality (legal)", "raters"]
        header.append("baseline")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in part.iterrows():
            rank = "" if pd.isna(row["rank"]) else int(row["rank"])
            pareto = "" if pd.isna(row["pareto"]) else ("✓" if row["pareto"] else "·")
            cells = [rank, row["defense"], row["attack"], row["threat_model"], row["n_seeds"],
                     score_name(row["rank_by"]), _fmt(row.get("mp_auc_mean"), row.get("mp_auc_std")),
                     _fmt(row["mitigation_power_mean"], row["mitigation_power_std"]), _by_budget(row),
                     row.get("budgets") or "", _fmt(row["legal_impact_mean"], row["legal_impact_std"]), pareto]
            for n in [*primaries, *names]:
                cells += [_fmt(row.get(f"{role}_{n}_mean"), row.get(f"{role}_{n}_std")) for role in ("illegal", "legal")]
            if human:
                cells += [_fmt(row.get(f"human_{role}_{what}_mean"), row.get(f"human_{role}_{what}_std"))
                          for what in ("concept", "quality") for role in ("illegal", "legal")]
                cells.append("" if pd.isna(row["human_raters"]) else int(row["human_raters"]))
            cells.append(row["baseline_matched"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
