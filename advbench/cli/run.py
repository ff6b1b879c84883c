"""``advbench run``: one cell, printed as an illegal/legal table, and a verdict against the undefended model.

Unless ``--no-baseline`` (or the defense is ``none``), the undefended cell with the same attack, domain, seed
and budgets runs too (or comes from the results file or the stage cache), so the command can say at every
budget whether the defense helped: mitigation power, legal impact and the delay factor.
"""

from __future__ import annotations

import click

from advbench.cells import MAX_SEED
from advbench.cli.options import adversary_options, execution_options, metric_option, parse_metrics, run_options
from advbench.exposure import BASES
from advbench.interfaces import THREAT_MODELS

DEFAULT_RESULTS = "results/runs.jsonl"


@click.command()
@click.option("--defense", default="none", show_default=True, help="Defense plugin (see `advbench list`).")
@click.option("--defense-arg", "defense_args", multiple=True, metavar="KEY=VALUE",
              help="Defense parameter, repeatable (see `advbench show defense NAME`).")
@click.option("--attack", default="fullft", show_default=True, help="Attack plugin.")
@click.option("--attack-arg", "attack_args", multiple=True, metavar="KEY=VALUE", help="Attack parameter.")
@click.option("--domain", default="portraits", show_default=True, help="Domain plugin.")
@click.option("--domain-arg", "domain_args", multiple=True, metavar="KEY=VALUE", help="Domain parameter.")
@click.option("--threat-model", type=click.Choice(THREAT_MODELS), default="compliant", show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0, show_default=True)
@click.option("--model", "model_path", default=None,
              help="Local model folder (default: the domain's model); a Hugging Face hub id only as hf:OWNER/NAME.")
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results JSONL to append to.")
@click.option("--budgets", default=None, metavar="B1,B2,...",
              help="Attack steps to score at, e.g. 25,50,100,200 (the last is the attack's steps). "
                   "Default: steps/8, /4, /2, steps.")
@click.option("--base", type=click.Choice(BASES), default="naive", show_default=True,
              help="exposed: fine-tune the base on the publisher's share of every class first (what an erasure "
                   "defense needs to erase).")
@click.option("--no-baseline", is_flag=True, help="Do not run the undefended cell for the verdict.")
@metric_option
@adversary_options()
@execution_options
def run(defense, defense_args, attack, attack_args, domain, domain_args, threat_model, seed, model_path,
        results, budgets, base, no_baseline, metric_args, suite_path, selection_seed, keep, **execution):
    """Run one cell: protect, attack each class, generate, score; print the illegal/legal table and a verdict
    against the undefended model.

    With --adversaries SUITE the attack is not one configuration but the suite's strongest against the defense
    (and, for the comparison, the strongest against no defense), found by successive halving on the selection
    seed and then run on --seed; the command ends with a one-line worst-case verdict."""
    import time

    from advbench.cells import Cell, PluginSpec, check_budgets
    from advbench.cli.tables import print_record, print_verdict
    from advbench.params import parse_assignments
    from advbench.results import ResultStore, cell_id
    from advbench.runner import run_cell
    from advbench.validation import check_run_outputs

    precision = execution.pop("mixed_precision")
    if suite_path is not None:
        return _worst_case(defense, defense_args, domain, domain_args, seed, model_path, results, base, no_baseline,
                           metric_args, suite_path, selection_seed, keep, precision, attack_args, budgets, execution)
    attack_spec = PluginSpec("attack", attack, parse_assignments(attack_args, "--attack-arg"))
    domain_spec = PluginSpec("domain", domain, parse_assignments(domain_args, "--domain-arg"))
    budgets = check_budgets(budgets) if budgets is not None else None
    metrics = parse_metrics(metric_args)
    cell = Cell(PluginSpec("defense", defense, parse_assignments(defense_args, "--defense-arg")),
                attack_spec, domain_spec, threat_model, seed, model_path, budgets, base, precision, metrics)
    check_run_outputs(results, execution["cache_dir"], not execution["no_cache"])
    cell.validate()
    baseline = None
    if not no_baseline and defense != "none":
        baseline = Cell(PluginSpec("defense", "none"), cell.attack, domain_spec, threat_model, seed, model_path,
                        cell.budgets, base, precision, cell.metrics)
        baseline.validate()
    store = ResultStore(results)
    known = store.finished_ids()  # a corrupt results file is reported before any work
    store.flush_pending()  # records an earlier run could not write (a full disk) join the file now
    options = run_options(**execution)
    reused = cell_id(cell.to_json()) in known
    record = run_cell(cell, store, options)
    print_record(record)
    if reused:
        click.echo(f"cell {record['cell_id']} was already in {results}: reused that record (finished "
                   f"{record['finished_at']}); nothing was appended", err=True)
    else:
        click.echo(f"result appended to {results} (cell {record['cell_id']})", err=True)
    if baseline is None:
        return
    known = cell_id(baseline.to_json()) in known
    t0 = time.perf_counter()
    base_record = run_cell(baseline, store, options)
    seconds = time.perf_counter() - t0
    if known:
        source = f"taken from {results} ({seconds:.1f} s; it took {base_record['total_seconds']:.0f} s to compute)"
    else:
        cached = sum(s["cached"] for s in base_record["stages"])
        source = f"{seconds:.1f} s, {cached} of {len(base_record['stages'])} stages from the stage cache"
    click.echo(f"undefended baseline: {source}", err=True)
    print_verdict(record, base_record)


def _worst_case(defense, defense_args, domain, domain_args, seed, model_path, results, base, no_baseline,
                metric_args, suite_path, selection_seed, keep, precision, attack_args, budgets, execution) -> None:
    """``run --adversaries``: the worst-case cells of the defense and of no defense at ``seed``, and the verdict."""
    from advbench.adversaries import load_suite
    from advbench.cells import PluginSpec
    from advbench.cli.tables import print_record
    from advbench.errors import UserError
    from advbench.params import parse_assignments
    from advbench.results import ResultStore
    from advbench.validation import check_run_outputs
    from advbench.worstcase import Job, run_job

    if attack_args or budgets:
        raise UserError("--attack-arg and --budgets do not apply with --adversaries: the suite sets the attacks, "
                        "their parameters and the budgets; drop them")
    if no_baseline:
        raise UserError("--no-baseline does not apply with --adversaries: the worst case is measured against the "
                        "strongest adversary of the undefended model; drop it")
    suite = load_suite(suite_path)
    domain_spec = PluginSpec("domain", domain, parse_assignments(domain_args, "--domain-arg"))
    defense_spec = PluginSpec("defense", defense, parse_assignments(defense_args, "--defense-arg"))
    metrics = parse_metrics(metric_args)
    jobs = [Job(spec, domain_spec, (seed,), base, model_path, precision, metrics)
            for spec in ([PluginSpec("defense", "none")] + ([defense_spec] if defense != "none" else []))]
    for job in jobs:  # every mistake before any work
        job.cell(suite, suite.adversaries[0], seed, selection_seed).validate()
    check_run_outputs(results, execution["cache_dir"], not execution["no_cache"])
    store = ResultStore(results)
    store.finished_ids()  # a corrupt results file is reported before any work
    store.flush_pending()
    options = run_options(**execution)
    found = [run_job(job, suite, store, options, selection_seed, keep) for job in jobs]
    print_record(found[-1][0])
    click.echo(f"worst-case records in {results}", err=True)
    if defense == "none":
        return
    from advbench.worstcase import verdict

    click.echo(verdict(found[1], found[0]))


def attach(cli: click.Group) -> None:
    cli.add_command(run)
