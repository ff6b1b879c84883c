"""``advbench run``: one cell, printed as an illegal/legal table."""

from __future__ import annotations

import click

from advbench.cli.options import execution_options, run_options
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
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--model", "model_path", default=None, help="Local model folder (default: the domain's model).")
@click.option("--results", default=DEFAULT_RESULTS, show_default=True, help="Results JSONL to append to.")
@execution_options
def run(defense, defense_args, attack, attack_args, domain, domain_args, threat_model, seed, model_path,
        results, **execution):
    """Run one cell: protect, attack each class, generate, score; print the illegal/legal table."""
    from advbench.cells import Cell, PluginSpec
    from advbench.cli.tables import print_record
    from advbench.params import parse_assignments
    from advbench.results import ResultStore
    from advbench.runner import run_cell

    cell = Cell(
        PluginSpec("defense", defense, parse_assignments(defense_args, "--defense-arg")),
        PluginSpec("attack", attack, parse_assignments(attack_args, "--attack-arg")),
        PluginSpec("domain", domain, parse_assignments(domain_args, "--domain-arg")),
        threat_model, seed, model_path)
    cell.validate()
    store = ResultStore(results)
    store.records()  # a corrupt results file is reported before any work
    record = run_cell(cell, store, run_options(**execution))
    print_record(record)
    click.echo(f"result appended to {results} (cell {record['cell_id']})", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(run)
