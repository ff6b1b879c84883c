"""What the worst-case search costs, against the default-attack cells of the same attacks (issue 21: at most 3×).

    python benchmarks/search_cost.py [--defense freezeasguard --defense-arg p=0.3] [--domain portraits]
        [--domain-arg n_illegal=1 ...] [--suite benchmarks/adversaries/standard.toml] [--threads 1] [--json F]

Each part runs in its own empty stage cache, one seed:

1. the default cells: every attack plugin of the suite at its default parameters and the suite's budgets, against
   the defense (what a grid without the suite runs for this defense and domain);
2. the search: successive halving of the suite's adversaries against the defense on the selection seed (its own
   protect stage included);
3. the reported cell: the winner on the reported seed.

Prints seconds per part and the ratios search / default and (search + reported) / default. Training steps per
illegal class are printed too, computed from the suite (the search never trains a step twice, tested in
tests/test_halving.py). Run it alone on the machine; record the numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from advbench.adversaries import load_suite
from advbench.cells import PluginSpec
from advbench.halving import SELECTION_SEED, worst_case_search
from advbench.params import parse_assignments
from advbench.runner import RunOptions, run_cell
from advbench.worstcase import Job


def search_steps(suite, keep: float = 0.5) -> int:
    """Optimizer steps per illegal class of a search: every rung trains its survivors from the previous rung."""
    alive, total, last = len(suite.adversaries), 0, 0
    for budget in suite.budgets:
        total += alive * (budget - last)
        alive, last = max(1, math.ceil(keep * alive)), budget
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", default="freezeasguard")
    parser.add_argument("--defense-arg", action="append", default=[])
    parser.add_argument("--domain", default="portraits")
    parser.add_argument("--domain-arg", action="append", default=[])
    parser.add_argument("--suite", default="benchmarks/adversaries/standard.toml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    defense = PluginSpec("defense", args.defense, parse_assignments(args.defense_arg, "--defense-arg"))
    domain = PluginSpec("domain", args.domain, parse_assignments(args.domain_arg, "--domain-arg"))
    job = Job(defense, domain, (args.seed,))
    attacks = list(dict.fromkeys(a.attack.name for a in suite.adversaries))
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as default_cache, tempfile.TemporaryDirectory() as search_cache:
        t0 = time.perf_counter()
        for attack in attacks:
            from advbench.cells import Cell

            cell = Cell(defense, PluginSpec("attack", attack), domain, seed=args.seed, budgets=suite.budgets)
            run_cell(cell, None, RunOptions(cache_dir=default_cache, progress=False))
        seconds["default cells"] = time.perf_counter() - t0
        options = RunOptions(cache_dir=search_cache, progress=False)
        t0 = time.perf_counter()
        result, _ = worst_case_search(defense, domain, suite, options, SELECTION_SEED)
        seconds["search"] = time.perf_counter() - t0
        winner = next(a for a in suite.adversaries if a.id == result.winner)
        t0 = time.perf_counter()
        run_cell(job.cell(suite, winner, args.seed, SELECTION_SEED), None, options)
        seconds["reported cell"] = time.perf_counter() - t0
    default_steps = len(attacks) * suite.steps
    facts = {"defense": defense.display_label(), "domain": domain.display_label(), "suite": f"{suite.id}@{suite.version}",
             "adversaries": len(suite.adversaries), "attacks": attacks, "winner": result.winner,
             "threads": args.threads, "seconds": {k: round(v, 1) for k, v in seconds.items()},
             "ratio_search": round(seconds["search"] / seconds["default cells"], 2),
             "ratio_search_and_reported": round((seconds["search"] + seconds["reported cell"])
                                                / seconds["default cells"], 2),
             "steps_per_illegal_class": {"default cells": default_steps, "search": search_steps(suite)}}
    table = Table(title=f"worst-case search cost: {facts['defense']} on {facts['domain']}, suite {facts['suite']} "
                        f"({facts['adversaries']} adversaries), {args.threads} thread(s)")
    for column in ("part", "seconds", "× default cells"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, value in seconds.items():
        table.add_row(part, f"{value:.1f}", f"{value / seconds['default cells']:.2f}")
    table.add_row("search + reported cell", f"{seconds['search'] + seconds['reported cell']:.1f}",
                  f"{facts['ratio_search_and_reported']:.2f}")
    Console().print(table)
    print(f"training steps per illegal class: default cells {default_steps}, search {search_steps(suite)} "
          f"({search_steps(suite) / default_steps:.2f}x); winner {result.winner}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(facts, f, indent=1)


if __name__ == "__main__":
    main()
