"""Per seed, the judge's recognition of the illegal and legal classes for every defense of a results file.

    python benchmarks/recognition_table.py results/darkminer.jsonl --attack no-attack [--domain portraits]

One table per domain (and base) and attack: a row per seed, a column per defense, each cell
"illegal / legal" recognition at the final budget (the share of generated images the domain's judge assigns
to the prompted class: `identity-recognition`, `style-recognition` or `motif-recognition`), and a last row
with the mean over seeds. With the `no-attack` attack this is "did the defense erase before any attack"; with
`textual-inversion` it is the success rate of a concept-inversion attack (Dark Miner's and UCE's CCE numbers).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from advbench.cells import domain_key
from advbench.results import ResultStore

RECOGNITIONS = ("identity-recognition", "style-recognition", "motif-recognition")


def recognition_metric(record: dict) -> str | None:
    return next((m for m in RECOGNITIONS if m in record["metrics"]["illegal"]), None)


def tables(records: list[dict], attacks: list[str], domains: list[str] | None) -> list[str]:
    """Markdown lines: per (domain, attack), seeds × defenses of "illegal / legal" recognition."""
    cells: dict[tuple, dict[str, dict[int, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for rec in records:
        cell, metric = rec["cell"], recognition_metric(rec)
        domain = domain_key(cell)
        if metric is None or cell["attack"]["label"] not in attacks:
            continue
        if domains and cell["domain"]["name"] not in domains:
            continue
        pair = (rec["metrics"]["illegal"][metric], rec["metrics"]["legal"][metric])
        cells[(domain, cell["attack"]["label"], metric)][cell["defense"]["label"]][cell["seed"]] = pair
    lines: list[str] = []
    for (domain, attack, metric), by_defense in cells.items():
        defenses = sorted(by_defense, key=lambda d: (d != "none", d))  # the undefended model first
        seeds = sorted({s for per_seed in by_defense.values() for s in per_seed})
        lines += [f"{domain}, {attack}: {metric}, illegal / legal", "",
                  "| seed | " + " | ".join(defenses) + " |", "|" + " --- |" * (len(defenses) + 1)]
        for seed in seeds:
            row = [by_defense[d].get(seed) for d in defenses]
            lines.append(f"| {seed} | " + " | ".join("" if p is None else f"{p[0]:.2f} / {p[1]:.2f}" for p in row)
                         + " |")
        means = [np.mean(list(by_defense[d].values()), axis=0) for d in defenses]
        lines += ["| mean | " + " | ".join(f"{m[0]:.2f} / {m[1]:.2f}" for m in means) + " |", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--attack", action="append", required=True, help="attack label(s), e.g. no-attack")
    parser.add_argument("--domain", action="append", default=None)
    args = parser.parse_args()
    print("\n".join(tables(ResultStore(args.results).records(), args.attack, args.domain)))


if __name__ == "__main__":
    main()
