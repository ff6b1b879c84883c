"""Per domain, the defended rows of a results file as a Markdown table with 95 % bootstrap intervals.

    python benchmarks/curve_table.py results/meta-defenses.jsonl [--domain portraits]

Columns: MP at every budget (mean over seeds), MP-AUC and MP at the final budget with their 95 % intervals
(:mod:`advbench.intervals`: seeds, and images where the records hold per-image values), legal impact, the
illegal recognition of the undefended → defended model at the final budget, and whether the row mitigates
(the leaderboard's verdict, short form: yes / not shown / no, it helps the attacker / undetermined). The tables in docs/results.md §6 and later are printed by this script.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

from advbench.leaderboard import BASELINE, build_leaderboard
from advbench.results import ResultStore


def _signed(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{'+' if value > 0 else ''}{value:.{digits}f}".replace("-", "−")


def _ci(row: pd.Series, name: str) -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if low is None or pd.isna(low):
        return ""
    return f" [{_signed(low)}, {_signed(high)}]"


def _recognition(df: pd.DataFrame) -> str | None:
    return next((c[len("illegal_"):-len("_mean")] for c in df.columns if c.startswith("illegal_")
                 and c.endswith("-recognition_mean") and df[c].notna().any()), None)


def domain_table(df: pd.DataFrame, domain: str) -> list[str]:
    part = df[df["domain"] == domain]
    budgets = [b for b in str(part["budgets"].dropna().iloc[0]).split(",") if b] if part["budgets"].notna().any() else []
    recognition = _recognition(part)
    header = ["row", "seeds", *(f"MP @{b}" for b in budgets), "MP-AUC [95% CI]", "MP final [95% CI]",
              "legal impact", f"illegal {recognition} (none → defended)" if recognition else "", "mitigates?"]
    header = [h for h in header if h]
    lines = [f"| {domain} | " + " | ".join(header[1:]) + " |", "|" + " --- |" * len(header)]
    base = part[part["defense"] == BASELINE].set_index(["attack", "threat_model"])
    for _, row in part[part["defense"] != BASELINE].iterrows():
        cells = [f"{row['defense']} vs {row['attack']}", str(row["n_seeds"])]
        cells += [_signed(row.get(f"mitigation_power_b{b}_mean")) for b in budgets]
        cells += [_signed(row["mp_auc_mean"]) + _ci(row, "mp_auc"),
                  _signed(row["mitigation_power_mean"]) + _ci(row, "mitigation_power"),
                  _signed(row["legal_impact_mean"]) + _ci(row, "legal_impact")]
        if recognition:
            column = f"illegal_{recognition}_mean"
            undefended = base[column].get((row["attack"], row["threat_model"]), float("nan")) if len(base) else math.nan
            cells.append(f"{undefended:.2f} → {row[column]:.2f}")
        cells.append(str(row.get("mitigates", "")).split(":")[0])  # the verdict's short form (yes / not shown / ...)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--domain", action="append", default=None)
    args = parser.parse_args()
    df = build_leaderboard(ResultStore(args.results).records(), intervals="all")
    for domain in args.domain or list(dict.fromkeys(df["domain"])):
        print("\n".join(domain_table(df, domain)) + "\n")


if __name__ == "__main__":
    main()
