"""Per-attack summary of a results file: recognition before/after each attack, and each defense's MP/LI per attack.

    python benchmarks/attack_summary.py results/attacks.jsonl [--before no-attack] [--baseline none]

Prints two Markdown tables per domain (the ones in docs/results.md, section 2):

1. the undefended model (``--baseline``) before any adaptation (the ``--before`` attack's rows) and after each
   attack: how often the judge recognizes the illegal and legal classes, and the illegal primary metric;
2. every other defense × attack: mitigation power, legal impact and the illegal recognition left to the attacker;

and one cost table: per attack, the adapt stages actually run (not cached) with their mean seconds, seconds per
optimizer step and the process's peak memory, as the records' ``stages`` give them (so the machine's load and
``--threads`` at bench time apply; DreamBooth's adapt includes generating its class images when not cached).

Numbers are mean ± std over seeds, from the same aggregation as ``advbench leaderboard``.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

from advbench.leaderboard import build_leaderboard
from advbench.results import ResultStore


def _fmt(mean: float, std: float, digits: int = 3, signed: bool = True) -> str:
    """``mean ± std``; ``signed`` marks positive scores (MP, LI) with "+"."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    sign = "+" if signed and mean > 0 else ""
    return f"{sign}{mean:.{digits}f} ± {0.0 if math.isnan(std) else std:.{digits}f}".replace("-", "−")


def _recognition_metric(part: pd.DataFrame) -> str | None:
    for column in part.columns:
        if column.startswith("illegal_") and column.endswith("-recognition_mean") and part[column].notna().any():
            return column[len("illegal_"):-len("_mean")]
    return None


def _get(row: pd.Series, column: str) -> tuple[float, float]:
    return row[f"{column}_mean"], row[f"{column}_std"]


def summarize(df: pd.DataFrame, before: str, baseline: str) -> str:
    out = []
    for domain, part in df.groupby("domain", sort=True):
        primary = part["primary_metric"].iloc[0]
        recog = _recognition_metric(part)
        attacks = [a for a in dict.fromkeys(part["attack"]) if a != before]
        base = part[part["defense"] == baseline].set_index(["attack", "threat_model"])
        out.append(f"## {domain}\n\nRecognition metric: `{recog}`; primary metric: `{primary}`.\n")
        out.append(f"| attack | threat model | illegal {recog} | legal {recog} | illegal {primary} | legal {primary} |")
        out.append("|---|---|---|---|---|---|")
        for (attack, threat), row in base.iterrows():
            name = f"{attack} (before)" if attack == before else attack
            cols = [_fmt(*_get(row, f"{role}_{metric}"), digits=2 if metric == recog else 3, signed=False)
                    for metric in (recog, primary) for role in ("illegal", "legal")]
            out.append(f"| {name} | {threat} | " + " | ".join(cols) + " |")
        defenses = sorted(d for d in set(part["defense"]) if d != baseline)
        out.append("")
        header = ["attack"] + [f"{d} MP" for d in defenses] + [f"{d} LI" for d in defenses] + \
            [f"illegal {recog}: {d}" for d in [baseline, *defenses]]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for attack in attacks:
            sub = part[part["attack"] == attack].set_index("defense")
            cells = [attack]
            for column in ("mitigation_power", "legal_impact"):
                cells += [_fmt(*_get(sub.loc[d], column)) if d in sub.index else "—" for d in defenses]
            cells += [_fmt(*_get(sub.loc[d], f"illegal_{recog}"), digits=2, signed=False) if d in sub.index else "—"
                      for d in [baseline, *defenses]]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def cost_table(records: list[dict]) -> str:
    runs: dict[str, list[tuple[float, int, float]]] = {}
    for rec in records:
        attack = rec["cell"]["attack"]
        steps = attack["params"].get("steps")
        for stage in rec["stages"]:
            if stage["stage"] == "adapt" and not stage["cached"] and isinstance(steps, int) and steps > 0:
                runs.setdefault(attack["label"], []).append((stage["seconds"], steps, stage["peak_memory_mb"]))
    out = ["| attack | adapt stages run | mean s per adapt | s per step | peak MB (process) |", "|---|---|---|---|---|"]
    for label, items in runs.items():
        secs = [s for s, _, _ in items]
        per_step = sum(s / n for s, n, _ in items) / len(items)
        peak = max((m for _, _, m in items if m is not None), default=float("nan"))
        out.append(f"| {label} | {len(items)} | {sum(secs) / len(secs):.1f} | {per_step:.3f} | {peak:.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--before", default="no-attack", help="attack label whose rows are 'before adaptation'")
    parser.add_argument("--baseline", default="none", help="defense label of the undefended model")
    args = parser.parse_args()
    records = ResultStore(args.results).records()
    print(summarize(build_leaderboard(records), args.before, args.baseline))
    print("## Cost of each attack's adapt stage\n")
    print(cost_table(records))


if __name__ == "__main__":
    main()
