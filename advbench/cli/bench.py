"""``advbench bench SPEC.toml``: run a grid of cells with a live table; resumable; optional regression check."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from advbench.cli.options import adversary_options, metric_option
from advbench.errors import UserError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--results", default=None, help="Results JSONL (default: the spec's `results`, else results/<name>.jsonl).")
@click.option("--check", "check_csv", default=None, type=click.Path(dir_okay=False),
              help="Leaderboard CSV to compare with; exit 1 when a defense regressed.")
@click.option("--tolerance", type=float, default=0.05, show_default=True,
              help="Allowed absolute drop of mitigation power / rise of legal impact for --check.")
@click.option("--any-change", is_flag=True,
              help="With --check: flag moves in either direction, and of the primary metric's values (relative).")
@click.option("--dry-run", is_flag=True, help="Validate the spec and list the cells without running them.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Stage cache folder (default: $ADVBENCH_CACHE or .advbench_cache).")
@click.option("--no-cache", is_flag=True, help="Recompute every stage.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, mps, or auto.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--shard", default=None, metavar="K/N",
              help="Run only every N-th cell starting at the K-th (1-based), e.g. 1/2 and 2/2 in two processes "
                   "or on two machines; all shards may append to the same results file.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads for this process (default: torch's choice, usually all cores).")
@click.option("--match", "matches", multiple=True, metavar="TEXT",
              help="Run only the cells whose description (as --dry-run lists it) contains TEXT; repeat to require "
                   "several. Cell ids do not change, so a later full run skips these cells.")
@click.option("--executor", "executor_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells one after another here; ray: each cell a Ray task (pip install \"advbench[ray]\"; "
                   "docs/cluster.md).")
@click.option("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="Ray cluster to use (default: start a local Ray instance).")
@click.option("--num-cpus", type=float, default=None, help="CPUs per cell on Ray (default: the spec's [ray], else 1).")
@click.option("--num-gpus", type=float, default=None, help="GPUs per cell on Ray (default: the spec's [ray], else 0).")
@metric_option
@adversary_options()
def bench(spec_path, results, check_csv, tolerance, any_change, dry_run, shard, threads, matches, executor_name, address,
          num_cpus, num_gpus, metric_args, suite_path, selection_seed, keep, **execution):
    """Run every cell of a benchmark spec (finished cells are skipped, so a killed run resumes).

    Cells run in the spec's order: domain, then defense, attack, threat model and seed; with --executor ray they
    run in parallel as Ray tasks and the driver appends each record as it comes back. With an adversary suite
    (the spec's `adversaries`, or --adversaries) the worst-case jobs follow, one per domain and defense (the
    undefended ones first), sharded like the cells.
    """
    from rich.console import Console
    from rich.live import Live
    from rich.markup import escape

    from advbench.cli.options import parse_metrics, run_options
    from advbench.cli.tables import cells_table
    from advbench.executors import RayConfig, make_executor, run_grid
    from advbench.results import ResultStore, cell_id
    from advbench.spec import load_spec
    from advbench.validation import check_run_outputs, check_tolerance

    check_tolerance(tolerance)
    shard_index, shard_count = parse_shard(shard)
    if check_csv:
        from advbench.regression import read_baseline

        read_baseline(Path(check_csv))  # a bad baseline is reported before the grid runs, not after
    flags = {"address": address, "num_cpus": num_cpus, "num_gpus": num_gpus}
    if executor_name != "ray" and any(v is not None for v in flags.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None)
        raise UserError(f"{given} only apply to --executor ray")
    spec = load_spec(spec_path, execution.pop("mixed_precision"), parse_metrics(metric_args))
    if suite_path is not None:
        from advbench.adversaries import load_suite

        spec.adversaries, spec.selection_seed = load_suite(suite_path), selection_seed
    if spec.adversaries is not None and executor_name == "ray":
        raise UserError("worst-case jobs (adversaries) run with --executor local only: a search's rungs depend "
                        "on each other; run the plain cells on Ray without the suite")
    ray_config = RayConfig(**{**spec.ray, **{k: v for k, v in flags.items() if v is not None}})
    executor = make_executor(executor_name, ray_config, threads)  # no Ray installed: one line, before any work
    results = results or spec.results or f"results/{spec.name}.jsonl"
    check_run_outputs(results, execution["cache_dir"], not execution["no_cache"])
    store = ResultStore(results)
    done = store.finished_ids()
    store.flush_pending()  # records an earlier run could not write (a full disk) join the file now
    all_ids = [cell_id(cell.to_json()) for cell in spec.cells]
    chosen = [(c, i) for c, i in zip(spec.cells, all_ids) if all(m in c.describe() for m in matches)]
    jobs = _jobs(spec, matches)[shard_index::shard_count]
    if not chosen and not jobs:
        raise UserError(f"no cell of {spec_path} matches {' and '.join(map(repr, matches))}; "
                        "see the cell descriptions with --dry-run")
    cells = [c for c, _ in chosen][shard_index::shard_count]
    ids = [i for _, i in chosen][shard_index::shard_count]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = Console(stderr=True)
    if dry_run:
        for cell, cid in zip(cells, ids):
            console.print(f"{'done' if cid in done else 'todo'}  {cid}  {escape(cell.describe())}")
        _list_jobs(console, jobs, spec, store)
        return
    options = run_options(**{**execution, "device": "cpu"}, quiet=True)
    options.device = executor.device(execution["device"])  # on Ray: the workers' device, not this machine's
    rows: dict[int, dict] = {}
    shard_text = f" (shard {shard})" if shard else ""
    where = f" on ray ({address or 'local instance'})" if executor_name == "ray" else ""
    title = f"{spec.name}: {len(cells)} of {len(spec.cells)} cells{shard_text}{where} -> {results}"

    def table():
        return cells_table([rows[i] for i in sorted(rows)], title)

    try:
        executor.start()  # a Ray instance or cluster that cannot be reached fails here, before the live table
        with Live(table(), console=console, refresh_per_second=2, transient=False) as live:
            def report(index, cell, record, status):
                rows[index] = _row(cell, record, status)
                live.update(table())

            run_grid(cells, ids, store, options, executor, report)
    finally:
        executor.close()
        if not console.is_terminal:
            console.line()  # rich ends a live table with a newline only on a terminal (not in logs, CI, SLURM)
    console.print(f"{len(ids)} cells finished; results in {results}")
    _run_jobs(console, jobs, spec, store, options, keep)
    if check_csv:
        from advbench.cli.leaderboard import check_command

        wanted = {i for _, i in chosen}
        records = [r for r in store.records() if r["cell_id"] in wanted]
        if len({r["cell_id"] for r in records}) < len(wanted):
            raise UserError("--check needs every cell of the spec in the results; run the other shards first")
        if not check_command(records, check_csv, tolerance, any_change=any_change):
            sys.exit(1)


def _jobs(spec, matches) -> list:
    """The spec's worst-case jobs (none without a suite) whose description holds every ``--match`` text."""
    from advbench.worstcase import jobs_for

    if spec.adversaries is None:
        return []
    return [j for j in jobs_for(spec.cells) if all(m in j.describe(spec.adversaries) for m in matches)]


def _list_jobs(console, jobs, spec, store) -> None:
    from rich.markup import escape

    from advbench.worstcase import reported

    records = store.records()
    for job in jobs:
        found = reported(records, job, spec.adversaries, spec.selection_seed)
        status = "done" if len(found) == len(job.seeds) else "todo"
        console.print(f"{status}  worst-case search  {escape(job.describe(spec.adversaries))}")


def _run_jobs(console, jobs, spec, store, options, keep) -> None:
    """Each job's search and reported cells, a line per job (the search's rungs are in its records)."""
    import time

    from rich.markup import escape

    from advbench.worstcase import run_job

    for n, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        console.print(f"worst case {n}/{len(jobs)}: {escape(job.describe(spec.adversaries))} ...")
        records = run_job(job, spec.adversaries, store, options, spec.selection_seed, keep)
        primary = records[0]["metrics"]["primary"]
        values = ", ".join(f"seed {r['cell']['seed']}: {r['metrics']['illegal'][primary]:.4g}" for r in records)
        console.print(f"  strongest adversary {records[0]['cell']['adversary']['id']}; illegal {primary} {values} "
                      f"({time.perf_counter() - t0:.0f} s)")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` → (K-1, N): the 0-based start and the stride; None → the whole grid."""
    if text is None:
        return 0, 1
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not K/N; write e.g. --shard 1/2") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: K must be between 1 and N; write e.g. --shard 2/2")
    return k - 1, n


def _row(cell, record, status):
    from advbench.cells import with_base

    row = {"domain": with_base(cell.domain.display_label(), cell.base), "defense": cell.defense.display_label(),
           "attack": cell.attack.display_label(), "threat": cell.threat_model, "seed": cell.seed, "status": status}
    if record is not None:
        primary = record["metrics"]["primary"]
        row["illegal"] = record["metrics"]["illegal"].get(primary, "")
        row["legal"] = record["metrics"]["legal"].get(primary, "")
        row["seconds"] = record["total_seconds"]
    return row


def attach(cli: click.Group) -> None:
    cli.add_command(bench)
