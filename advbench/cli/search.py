"""``advbench search``: which adversary of a suite is strongest against a defense, and against no defense.

The worst-case search of issue 21 on its own (advbench/halving.py): successive halving of the suite's
adversaries, for the defense and for ``none``, on a selection seed (>= 10000, never a reported seed). It prints
each rung and the winners, and with ``-o`` writes the whole search as JSON. ``run``/``bench --adversaries`` also
run the winners on the reported seeds (advbench.worstcase).
"""

from __future__ import annotations

import click

from advbench.cli.options import adversary_options, execution_options
from advbench.exposure import BASES


@click.command()
@click.option("--defense", default="none", show_default=True, help="Defense plugin (see `advbench list`).")
@click.option("--defense-arg", "defense_args", multiple=True, metavar="KEY=VALUE", help="Defense parameter.")
@click.option("--domain", default="portraits", show_default=True, help="Domain plugin.")
@click.option("--domain-arg", "domain_args", multiple=True, metavar="KEY=VALUE", help="Domain parameter.")
@adversary_options(required=True, reporting=False)
@click.option("--base", type=click.Choice(BASES), default="naive", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the search as JSON.")
@execution_options
def search(defense, defense_args, domain, domain_args, suite_path, selection_seed, keep, base, output, **execution):
    """Successive halving of a suite's adversaries against DEFENSE and against no defense on DOMAIN."""
    import json
    from pathlib import Path

    from advbench.adversaries import load_suite
    from advbench.cells import PluginSpec
    from advbench.cli.options import run_options
    from advbench.halving import worst_case_search
    from advbench.params import parse_assignments
    from advbench.safeio import atomic_write
    from advbench.validation import check_output_file, check_run_outputs
    from advbench.worstcase import search_summary

    precision = execution.pop("mixed_precision")
    suite = load_suite(suite_path)
    defense_spec = PluginSpec("defense", defense, parse_assignments(defense_args, "--defense-arg"))
    domain_spec = PluginSpec("domain", domain, parse_assignments(domain_args, "--domain-arg"))
    if output:
        check_output_file(output, "search output", "pass a writable .json path with -o")
    check_run_outputs(None, execution["cache_dir"], not execution["no_cache"])
    options = run_options(**execution)
    targets = [defense_spec] if defense == "none" else [defense_spec, PluginSpec("defense", "none")]
    summary = {"suite": {"id": suite.id, "version": suite.version, "fingerprint": suite.fingerprint()},
               "domain": domain_spec.display_label(), "base": base, "selection_seed": selection_seed, "keep": keep,
               "searches": {}}
    for target in targets:
        result, _ = worst_case_search(target, domain_spec, suite, options, selection_seed, keep, base, precision)
        summary["searches"][target.display_label()] = search_summary(result, selection_seed, keep)
        _print_search(target.display_label(), result)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(output), (json.dumps(summary, indent=1) + "\n").encode())
        click.echo(f"wrote {output}", err=True)


def _print_search(label: str, result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{label}: successive halving, winner {result.winner}")
    table.add_column("budget", justify="right")
    table.add_column("candidates", justify="right")
    table.add_column("kept (strongest first)")
    for rung in result.rungs:
        kept = ", ".join(f"{name} ({rung.scores[name]:.4g})" for name in rung.kept)
        table.add_row(str(rung.budget), str(len(rung.scores)), kept)
    Console().print(table)


def attach(cli: click.Group) -> None:
    cli.add_command(search)
