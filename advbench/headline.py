"""The leaderboard's headline: each defense under its strongest adversary (worst-case rows, :mod:`advbench.worstcase`).

One line per domain and defense: worst-case mitigation power, MP-AUC and illegal delay with their 95 % bootstrap
intervals (:mod:`advbench.intervals`), legal impact, the adversary that was strongest against the defense and the
one strongest against no defense, the lowest mitigation power any single default attack found (how far the
default attacker is from the worst case), and the verdict in words. Also the data of the sensitivity plot: each
adversary's mitigation power at the search's first rung, where every adversary was scored against both models.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from advbench.cells import WORST_THREAT

BASELINE = "none"
ADVERSARY_ID = re.compile(r"^(?P<label>.+)@lr×(?P<multiplier>[0-9.eE+-]+)$")


def worst_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The worst-case rows of a leaderboard (threat model ``any`` and an adversary named)."""
    if "adversary" not in df.columns:
        return df.iloc[0:0]
    return df[(df["threat_model"] == WORST_THREAT) & df["adversary"].fillna("").astype(str).ne("")]


def _interval(row: pd.Series, name: str, digits: str = ".3g") -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if low is None or pd.isna(low) or pd.isna(high):
        return "n/a"
    return f"[{low:{digits}}, {high:{digits}}]"


def _value(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.3g}"


def _delay(row: pd.Series) -> str:
    from advbench.curves import Bounded, format_delay

    bound = row.get("illegal_delay_bound")
    return format_delay(Bounded(float(row["illegal_delay"]), "" if pd.isna(bound) else str(bound)))


def _lowest_default(df: pd.DataFrame, domain: str, defense: str) -> str:
    """The lowest mean MP of the defense's per-attack (non-worst-case) rows on the domain, with that attack."""
    rows = df[(df["domain"] == domain) & (df["defense"] == defense) & (df["threat_model"] != WORST_THREAT)
              & df["mitigation_power_mean"].notna()]
    if rows.empty:
        return "n/a"
    low = rows.loc[rows["mitigation_power_mean"].idxmin()]
    return f"{low['mitigation_power_mean']:.3g} ({low['attack']}, {low['threat_model']})"


HEADER = ["domain", "defense", "suite", "seeds", "worst-case MP ↑", "95% CI", "MP-AUC [95% CI]",
          "illegal delay [95% CI]", "legal impact", "strongest adversary", "strongest vs undefended",
          "lowest default-attack MP", "mitigates?"]
INTRO = ("The strongest adversary of the suite against the defense, compared with the strongest against the "
         "undefended model, both chosen by successive halving on the selection seed and reported on other seeds "
         "(docs/adversaries.md). Intervals: 95 % two-level bootstrap over seeds and generated images. A defense "
         "mitigates only where the interval of its worst-case MP lies above 0.")


def headline_rows(df: pd.DataFrame) -> list[list[str]]:
    """The headline table's rows (texts in ``HEADER`` order), one per worst-case defended row of ``df``."""
    worst = worst_rows(df)
    rows = []
    for _, row in worst[worst["defense"] != BASELINE].iterrows():
        base = worst[(worst["domain"] == row["domain"]) & (worst["attack"] == row["attack"])
                     & (worst["defense"] == BASELINE)]
        rows.append([str(c) for c in (
            row["domain"], row["defense"], row["attack"], row["n_seeds"], _value(row["mitigation_power_mean"]),
            _interval(row, "mitigation_power"), f"{_value(row['mp_auc_mean'])} {_interval(row, 'mp_auc')}",
            f"{_delay(row)} {_interval(row, 'illegal_delay')}", _value(row["legal_impact_mean"]), row["adversary"],
            base.iloc[0]["adversary"] if len(base) else "missing", _lowest_default(df, row["domain"], row["defense"]),
            row.get("mitigates", ""))])
    return rows


def headline_lines(df: pd.DataFrame) -> list[str]:
    """Markdown lines of the headline table (empty when the leaderboard has no worst-case rows)."""
    rows = headline_rows(df)
    if not rows:
        return []
    lines = ["## Worst case: each defense under its strongest adversary", "", INTRO, "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return lines + [""]


def sensitivity_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (domain, defense, adversary): its learning-rate multiplier, ladder label and mitigation power at the
    search's first rung (the defense's score against the undefended search's score of the same adversary).
    Read from the worst-case records' ``search``; one point per adversary however many seeds were reported."""
    from advbench.cells import domain_key
    from advbench.curves import relative_degradation

    searches: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        cell = rec["cell"]
        if "adversary" in cell and "search" in rec:
            key = (domain_key(cell), cell["attack"]["label"], cell["defense"]["label"])
            hib = rec["metrics"]["higher_is_better"][rec["metrics"]["primary"]]
            searches.setdefault(key, {"rung": rec["search"]["rungs"][0], "hib": hib,
                                      "is_base": cell["defense"]["name"] == BASELINE})
    points = []
    for (domain, suite, defense), found in searches.items():
        base = next((s for (d, u, _), s in searches.items() if d == domain and u == suite and s["is_base"]), None)
        if found["is_base"] or base is None:
            continue
        for adversary, score in found["rung"]["scores"].items():
            match = ADVERSARY_ID.match(adversary)
            reference = base["rung"]["scores"].get(adversary, math.nan)
            if match is None:
                continue
            points.append({"domain": domain, "suite": suite, "defense": defense, "adversary": adversary,
                           "ladder": match["label"], "multiplier": float(match["multiplier"]),
                           "budget": found["rung"]["budget"],
                           "mitigation_power": relative_degradation(reference, score, found["hib"])})
    return points
