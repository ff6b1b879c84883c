"""Which tensors do FreezeAsGuard and random freezing freeze? A diagnosis table from a finished bench.

    python benchmarks/fg_diagnosis.py results/freezeasguard.jsonl [--cache-dir .advbench_cache]

First table, from the results alone: per domain and freezing ratio p, FreezeAsGuard's and random freezing's
mitigation power (final budget), MP-AUC (over the anytime curve) and legal impact (mean ± std over seeds, the leaderboard's definitions) and FG − R paired by
seed (both defenses attacked with the same seed's data split and attacker), mean ± std over seeds.

Second table: for every (domain, defense, p) of the results file it reads the freeze masks the cells' ``protect`` stages left
in the stage cache (``<cache>/protect/<key>/constraints.json``) and prints, as means over seeds:
- the frozen share of tensors and of parameters (FreezeAsGuard ranks tensors, so at equal tensor ratio p it can
  freeze a very different share of the weights than random freezing does);
- how stable the choice is: mean pairwise Jaccard overlap of the frozen sets across seeds;
- the frozen share of parameters per kind of tensor (the kinds of FreezeAsGuard's block heatmap: resnet,
  self-attention, cross-attention, feed-forward, ...), to see what FreezeAsGuard prefers;
- for FreezeAsGuard, its mask-learning curves (``mask_curves.csv``): the simulated user's illegal and legal
  losses at the first and the last mask step; ``--curves-png PATH`` also plots them per domain and p (mean
  over seeds) against the mask step.
Nothing here trains: it needs the cache of the bench run that wrote the results.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from statistics import mean

from advbench_plugins.defenses.fg_artifacts import KINDS, kind_of

def tensor_sizes(domain: str) -> dict[str, int]:
    from advbench.plugins import get

    model = get("domain", domain)().base_model()
    return {name: p.numel() for name, p in model.unet.named_parameters()}


def frozen_set(cache: Path, record: dict) -> set[str] | None:
    key = next((s["key"] for s in record["stages"] if s["stage"] == "protect"), None)
    path = cache / "protect" / str(key) / "constraints.json"
    if key is None or not path.exists():
        return None
    for constraint in json.loads(path.read_text()):
        if "frozen" in constraint:
            return {n.removeprefix("unet.") for n, f in constraint["frozen"].items() if f}
    return set()


def curve_rows(cache: Path, record: dict) -> list[dict[str, str]]:
    key = next(s["key"] for s in record["stages"] if s["stage"] == "protect")
    found = sorted((cache / "protect" / key).rglob("mask_curves.csv"))
    if not found:
        return []
    with open(found[0]) as f:
        return list(csv.DictReader(f))


def diagnose(results: Path, cache: Path) -> list[dict]:
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        d = r["cell"]["defense"]
        if d["name"] in ("random", "freezeasguard"):
            groups[(r["cell"]["domain"]["name"], d["name"], d["params"].get("p"), d["params"].get("unit"))].append(r)
    sizes_by_domain: dict[str, dict[str, int]] = {}
    rows = []
    for (domain, defense, p, unit), recs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        sizes = sizes_by_domain.setdefault(domain, tensor_sizes(domain))
        total = sum(sizes.values())
        masks = [m for m in (frozen_set(cache, r) for r in recs) if m is not None]
        if not masks:
            continue
        row = {"domain": domain, "defense": defense, "p": p, "unit": unit, "seeds": len(masks),
               "tensor share": mean(len(m) / len(sizes) for m in masks),
               "param share": mean(sum(sizes[n] for n in m) / total for m in masks),
               "jaccard across seeds": (mean(len(a & b) / max(len(a | b), 1) for a, b in combinations(masks, 2))
                                        if len(masks) > 1 else float("nan"))}
        for kind in KINDS:
            names = [n for n in sizes if kind_of(n) == kind]
            kind_total = sum(sizes[n] for n in names) or 1
            row[kind] = mean(sum(sizes[n] for n in names if n in m) / kind_total for m in masks)
        if defense == "freezeasguard":
            curves = [c for c in (curve_rows(cache, r) for r in recs) if c]
            for column in ("illegal_loss", "legal_loss"):
                for at, index in (("first", 0), ("last", -1)):
                    values = [float(c[index][column]) for c in curves]
                    row[f"{column} {at}"] = mean(values) if values else float("nan")
        rows.append(row)
    return rows


def plot_curves(results: Path, cache: Path, path: Path) -> Path:
    """Mask-learning curves (simulated user's illegal and legal loss per mask step), one panel per domain."""
    import numpy as np

    from advbench.plots import figure, save

    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    curves: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["cell"]["defense"]["name"] == "freezeasguard":
            rows = curve_rows(cache, r)
            if rows:
                curves[r["cell"]["domain"]["name"]][r["cell"]["defense"]["params"]["p"]].append(rows)
    if not curves:
        raise SystemExit(f"no FreezeAsGuard mask curves in {cache} for the cells of {results}")
    fig, axes = figure(len(curves), 7.5, 2.8)
    for ax, (domain, by_p) in zip(axes, sorted(curves.items())):
        for p, runs in sorted(by_p.items()):
            steps = [int(row["mask_step"]) for row in runs[0]]
            for column, style in (("illegal_loss", "-"), ("legal_loss", "--")):
                values = np.mean([[float(row[column]) for row in run] for run in runs], axis=0)
                ax.plot(steps, values, style, label=f"p={p} {column.split('_')[0]}")
        ax.set_title(f"{domain}: simulated user's loss during mask learning (mean over seeds)")
        ax.set_xlabel("mask step")
        ax.set_ylabel("diffusion loss")
        ax.legend(fontsize=7, ncol=3)
    return save(fig, path)


def _pm(values: list[float]) -> str:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return f"{arr.mean():+.3f} ± {std:.3f}"


def compare(results: Path) -> list[dict]:
    """FG vs R per (domain, attack, threat model, p, unit), paired by seed."""
    from advbench.leaderboard import score_records

    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for scored in score_records(records):
        cell = scored["record"]["cell"]
        d = cell["defense"]
        if d["name"] in ("random", "freezeasguard"):
            key = (cell["domain"]["name"], cell["attack"]["label"], cell["threat_model"], d["params"].get("p"),
                   d["params"].get("unit", "tensors"))
            by[key][d["name"]][scored["seed"]] = scored
    rows = []
    for key, sides in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        fg, rnd = sides.get("freezeasguard", {}), sides.get("random", {})
        seeds = sorted(set(fg) & set(rnd))
        if not seeds:
            continue
        row = dict(zip(("domain", "attack", "threat", "p", "unit"), key), seeds=len(seeds))
        for column, short in (("mitigation_power", "MP"), ("mp_auc", "MP-AUC"), ("legal_impact", "LI")):
            row[f"FG {short}"] = _pm([fg[s][column] for s in seeds])
            row[f"R {short}"] = _pm([rnd[s][column] for s in seeds])
            row[f"FG − R {short}"] = _pm([fg[s][column] - rnd[s][column] for s in seeds])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path(".advbench_cache"))
    parser.add_argument("--curves-png", type=Path, default=None, help="also plot the mask-learning curves here")
    args = parser.parse_args()
    import pandas as pd

    comparison = compare(args.results)
    if comparison:
        print(pd.DataFrame(comparison).to_markdown(index=False))
        print()
    rows = diagnose(args.results, args.cache_dir)
    if not rows:
        raise SystemExit(f"no random/freezeasguard cells with cached masks in {args.results} and {args.cache_dir}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    if args.curves_png:
        print(f"\nmask curves: {plot_curves(args.results, args.cache_dir, args.curves_png)}")


if __name__ == "__main__":
    main()
