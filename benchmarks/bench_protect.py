"""Time the protect stage of defenses at their tiny-world defaults (issue 15's target: at most 2 min on 2 CPUs).

    python benchmarks/bench_protect.py --defense imma --defense sophon [--domain portraits] [--threads 2]
    python benchmarks/bench_protect.py --defense imma --defense-arg imma:adaptation=fullft --repeats 3
    python benchmarks/bench_protect.py --from results/meta-defenses.jsonl   # the protect stages a grid built

The first form runs each defense's protect stage in an empty cache (the same stage a cell runs: the publisher's
share of seed 0's split, the domain's base model) ``--repeats`` times and prints wall and CPU seconds and peak
memory; CPU seconds divided by wall seconds shows how loaded the machine was. ``--from`` reads a results file
instead and prints, per defense label and domain, the seconds of every protect stage that was built (not
cached) in it: those ran inside a grid, usually two processes on two cores, so they are upper bounds.
Record the numbers, with the machine and its load, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _measure(defense: str, params: dict, domain: str, seed: int) -> dict:
    from advbench.cache import StageCache
    from advbench.cells import Cell, PluginSpec
    from advbench.profiling import measure
    from advbench.runner import RunOptions, _CellRun, protect_stage

    cell = Cell(PluginSpec("defense", defense, params), PluginSpec("attack", "no-attack"),
                PluginSpec("domain", domain), seed=seed)
    with tempfile.TemporaryDirectory() as cache:
        options = RunOptions(cache_dir=cache, progress=False)
        run = _CellRun(cell, options, StageCache(cache))
        cpu = time.process_time()
        with measure("cpu") as m:
            protect_stage(run)
        return {"wall": m.seconds, "cpu": time.process_time() - cpu, "peak_mb": m.peak_memory_mb}


def run_defenses(args) -> Table:
    import torch

    from advbench.params import parse_assignments

    torch.set_num_threads(args.threads)
    table = Table(title=f"protect stage, {args.domain}, seed {args.seed}, {torch.get_num_threads()} torch threads, "
                        "empty cache")
    for col in ("defense", "params", "repeats", "wall s (median)", "wall min-max", "CPU s (median)", "peak MB"):
        table.add_column(col, justify="left" if col in ("defense", "params") else "right")
    for defense in args.defense:
        prefix = f"{defense}:"
        params = parse_assignments([a[len(prefix):] for a in args.defense_arg if a.startswith(prefix)],
                                   "--defense-arg")
        runs = [_measure(defense, params, args.domain, args.seed) for _ in range(args.repeats)]
        walls = [r["wall"] for r in runs]
        table.add_row(defense, ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults", str(len(runs)),
                      f"{statistics.median(walls):.1f}", f"{min(walls):.1f}-{max(walls):.1f}",
                      f"{statistics.median(r['cpu'] for r in runs):.1f}", f"{max(r['peak_mb'] for r in runs):.0f}")
    return table


def from_results(path: Path) -> Table:
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        label = record["cell"]["defense"].get("label") or record["cell"]["defense"]["name"]
        for stage in record.get("stages", []):
            if stage["stage"] == "protect" and not stage["cached"]:
                seconds[(label, record["cell"]["domain"]["name"])].append(stage["seconds"])
    table = Table(title=f"protect stages built in {path}")
    for col in ("defense", "domain", "built", "seconds (median)", "min-max"):
        table.add_column(col, justify="left" if col in ("defense", "domain") else "right")
    for (label, domain), values in sorted(seconds.items()):
        table.add_row(label, domain, str(len(values)), f"{statistics.median(values):.1f}",
                      f"{min(values):.1f}-{max(values):.1f}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", action="append", default=[], help="a defense to time (repeatable)")
    parser.add_argument("--defense-arg", action="append", default=[], help="DEFENSE:KEY=VALUE (repeatable)")
    parser.add_argument("--domain", default="portraits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--from", dest="results", type=Path, help="read the protect stages of a results file")
    args = parser.parse_args(argv)
    if bool(args.results) == bool(args.defense):
        parser.error("give --defense (one or more) or --from RESULTS, not both")
    Console().print(from_results(args.results) if args.results else run_defenses(args))


if __name__ == "__main__":
    main()
