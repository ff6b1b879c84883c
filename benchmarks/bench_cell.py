"""Time one benchmark cell, stage by stage: cold (empty cache), then with the protected model cached.

    python benchmarks/bench_cell.py [--defense random] [--attack fullft] [--domain portraits] [--threads 2]
    python benchmarks/bench_cell.py --anytime     # a 4-budget cell against a 1-budget cell of the same steps

With ``--anytime`` it runs, each in an empty cache, the cell scored at steps/8, /4, /2 and steps, and the cell
scored at steps only, and prints their cost ratio (issue 13's target: at most 1.3).

Prints a table (seconds and peak memory per stage) and the totals. Run it alone: two processes sharing the
two cores slow each other down 4-5x. Record the numbers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import torch
from rich.console import Console
from rich.table import Table

from advbench.cells import Cell, PluginSpec
from advbench.params import parse_assignments
from advbench.runner import RunOptions, run_cell


def _table(title: str, record: dict) -> Table:
    table = Table(title=title)
    for col in ("stage", "runs", "cached", "seconds", "peak memory (MB)"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    rows: dict[str, dict] = defaultdict(lambda: {"runs": 0, "cached": 0, "seconds": 0.0, "peak": 0.0})
    for s in record["stages"]:
        row = rows[s["stage"]]
        row["runs"] += 1
        row["cached"] += int(s["cached"])
        row["seconds"] += s["seconds"]
        row["peak"] = max(row["peak"], s["peak_memory_mb"])
    for stage, row in rows.items():
        table.add_row(stage, str(row["runs"]), str(row["cached"]), f"{row['seconds']:.1f}", f"{row['peak']:.0f}")
    table.add_row("[bold]total[/bold]", "", "", f"[bold]{record['total_seconds']:.1f}[/bold]", "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", default="random")
    parser.add_argument("--defense-arg", action="append", default=[])
    parser.add_argument("--attack", default="fullft")
    parser.add_argument("--attack-arg", action="append", default=[])
    parser.add_argument("--domain", default="portraits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anytime", action="store_true", help="compare a 4-budget cell with a 1-budget cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()

    def cell(attack_args, budgets=None):
        return Cell(PluginSpec("defense", args.defense, parse_assignments(args.defense_arg, "--defense-arg")),
                    PluginSpec("attack", args.attack, attack_args),
                    PluginSpec("domain", args.domain), "compliant", 0, budgets=budgets)

    if args.anytime:
        attack_args = parse_assignments(args.attack_arg, "--attack-arg")
        ladder = cell(attack_args).resolved_budgets()
        records = {}
        for name, budgets in (("1 budget", ladder[-1:]), (f"{len(ladder)} budgets", ladder)):
            with tempfile.TemporaryDirectory() as cache:
                records[name] = run_cell(cell(attack_args, budgets), None, RunOptions(cache_dir=cache, progress=False))
            console.print(_table(f"{name} {list(budgets)}, cold ({torch.get_num_threads()} threads)", records[name]))
        one, many = records.values()
        adapt = [sum(s["seconds"] for s in r["stages"] if s["stage"] == "adapt") for r in (one, many)]
        console.print(f"cost of {len(ladder)} budgets / 1 budget: total {many['total_seconds'] / one['total_seconds']:.2f}x"
                      f", adapt stage {adapt[1] / adapt[0]:.2f}x (target: total <= 1.3x)")
        return

    with tempfile.TemporaryDirectory() as cache:
        options = RunOptions(cache_dir=cache, progress=False)
        attack_args = parse_assignments(args.attack_arg, "--attack-arg")
        cold = run_cell(cell(attack_args), None, options)
        console.print(_table(f"cold cell ({torch.get_num_threads()} threads)", cold))
        # a second attack configuration on the same protected model: protect comes from the cache
        warm_args = {**attack_args, "lr": float(cold["cell"]["attack"]["params"]["lr"]) * 0.999}
        warm = run_cell(cell(warm_args), None, options)
        console.print(_table("cell with the protected model cached", warm))


if __name__ == "__main__":
    main()
