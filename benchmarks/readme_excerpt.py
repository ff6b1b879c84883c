"""Write the README's leaderboard excerpt from leaderboards/standard.csv (generated, never edited by hand).

    python benchmarks/readme_excerpt.py [--csv leaderboards/standard.csv] [--readme README.md] [--top 2]

Per domain (portraits, artworks, explicit, then the others; the CI regression domain left out) and per attack of ATTACKS, the defended rows
of rank 1 to ``--top`` under the compliant threat model, and every worst-case row (threat model ``any``):
rank, defense, seeds, MP-AUC, MP and LI at the final budget (mean ± std), Pareto. The table between the
README's line starting with ``| domain | attack | rank | defense |`` and the next blank line is replaced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ATTACKS = ("fullft", "lora", "dreambooth", "textual-inversion")
DOMAIN_ORDER = ("portraits", "artworks", "explicit")  # then the others (exposed bases) in the CSV's order
SKIP_DOMAINS = ("portraits-small",)  # the CI regression benchmark: cut-down steps, not findings
HEADER = "| domain | attack | rank | defense | seeds | MP-AUC ↑ | MP @ final ↑ | LI (→ 0) | Pareto |"


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3g} ± {0 if pd.isna(std) else std:.2g}"


def excerpt(df: pd.DataFrame, top: int = 2) -> list[str]:
    lines = [HEADER, "|---|---|---|---|---|---|---|---|---|"]
    ranked = df[df["rank"].notna() & ~df["domain"].isin(SKIP_DOMAINS)]
    chosen = ranked[((ranked["threat_model"] == "compliant") & ranked["attack"].isin(ATTACKS) & (ranked["rank"] <= top))
                    | (ranked["threat_model"] == "any")]
    domains = [d for d in DOMAIN_ORDER if d in set(chosen["domain"])]
    domains += [d for d in dict.fromkeys(chosen["domain"]) if d not in domains]
    order = {**{a: i for i, a in enumerate(ATTACKS)}}
    chosen = chosen.assign(_d=chosen["domain"].map(domains.index),
                           _a=chosen["attack"].map(lambda a: order.get(a, len(order))))
    chosen = chosen.sort_values(["_d", "_a", "attack", "rank"], kind="mergesort")
    for _, row in chosen.iterrows():
        pareto = {True: "✓", False: "·"}.get(str(row.get("pareto")).lower() == "true", "")
        cells = [row["domain"], row["attack"], f"{row['rank']:.0f}", row["defense"], str(row["n_seeds"]),
                 _pm(row["mp_auc_mean"], row["mp_auc_std"]), _pm(row["mitigation_power_mean"], row["mitigation_power_std"]),
                 _pm(row["legal_impact_mean"], row["legal_impact_std"]), pareto]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def replace_table(text: str, table: list[str]) -> str:
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| domain | attack | rank | defense |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[:start] + table + lines[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="leaderboards/standard.csv")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--top", type=int, default=2)
    args = parser.parse_args()
    readme = Path(args.readme)
    readme.write_text(replace_table(readme.read_text(), excerpt(pd.read_csv(args.csv), args.top)))


if __name__ == "__main__":
    main()
