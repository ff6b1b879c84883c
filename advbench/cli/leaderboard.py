"""``advbench leaderboard RESULTS``: the leaderboard of a results file, as Markdown or CSV, to stdout and files.

``--check BASELINE_CSV`` compares with a saved leaderboard and exits 1 on a regression; :func:`check_command`
is the same check for ``advbench bench --check``. ``advbench leaderboard merge A.jsonl B.jsonl …`` joins several
results files into the standard leaderboard (:mod:`advbench.standard`); the one-file form keeps working because
``leaderboard`` is a :class:`DefaultGroup` that runs the one-file command when the first argument names no
subcommand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click

from advbench.errors import DataError, UserError


def load_records(results: str | Path) -> list[dict[str, Any]]:
    """Every record of a results file; a missing or empty file is a :class:`DataError`."""
    from advbench.results import ResultStore

    path = Path(results)
    if not path.exists():
        raise DataError(f"results file {path} not found; pass the .jsonl written by `advbench run` or `advbench bench`")
    records = ResultStore(path).records()
    if not records:
        raise DataError(f"results file {path} has no records; run `advbench run` or `advbench bench` first")
    return records


def check_command(records: list[dict[str, Any]], baseline_csv: str | Path, tolerance: float = 0.05,
                  echo: Callable[[str], None] | None = None, any_change: bool = False) -> bool:
    """Build the leaderboard of ``records``, compare it with ``baseline_csv`` and print the outcome.

    Returns True when there is no regression. Messages go to ``echo`` (default: stderr).
    """
    from advbench.leaderboard import build_leaderboard
    from advbench.regression import check_regressions

    echo = echo or (lambda message: click.echo(message, err=True))
    problems = check_regressions(build_leaderboard(records), baseline_csv, tolerance, any_change)
    for problem in problems:
        echo(f"REGRESSION {problem}")
    if problems:
        echo(f"{len(problems)} regression(s) against {baseline_csv} (tolerance {tolerance:g})")
    else:
        echo(f"no regressions against {baseline_csv} (tolerance {tolerance:g})")
    return not problems


class _SamePathContext(click.Context):
    """The default command's context shows the group's path (``advbench leaderboard``) in usage and help, so the
    one-file form reads exactly as it did when ``leaderboard`` was a plain command."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent is not None else super().command_path


class DefaultGroup(click.Group):
    """A group that runs ``default`` (a hidden subcommand) when the first argument is not a subcommand's name.

    Why: ``advbench leaderboard RESULTS [OPTIONS]`` predates ``merge``; scripts and tests call it, and its options
    may come before RESULTS, which a plain group would reject as its own unknown options.
    """

    default = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands or args[0] == self.default:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup)
def leaderboard_group():
    """Print the leaderboard of RESULTS (a results .jsonl); `leaderboard merge` joins several files."""


@leaderboard_group.command("show", hidden=True,
                           epilog="Several files: advbench leaderboard merge A.jsonl B.jsonl … (see "
                                  "`advbench leaderboard merge --help`).")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True,
              help="What to print to stdout.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Also write <name>.csv and <name>.md (and plots with --plot) into this folder.")
@click.option("--name", default=None, help="Base name of the written files (default: the results file's name).")
@click.option("--plot", is_flag=True,
              help="Write <name>.png (bars) and <name>-curves.png (anytime curves: mitigation and the primary metric "
                   "vs budget) when records carry curves, else <name>-budget.png (mitigation vs a budget swept "
                   "across cells).")
@click.option("--budget-param", default="steps", show_default=True,
              help="Attack parameter used as the attacker's budget in the -budget.png plot (records without curves).")
@click.option("--check", "check_csv", default=None, type=click.Path(dir_okay=False),
              help="Leaderboard CSV to compare with; exit 1 when a defense regressed.")
@click.option("--tolerance", type=float, default=0.05, show_default=True,
              help="Allowed absolute drop of mitigation power (and MP-AUC) / rise of legal impact for --check.")
@click.option("--any-change", is_flag=True,
              help="With --check: flag moves in either direction, and of the primary metric's values (relative).")
@click.option("--intervals", type=click.Choice(["worst-case", "all", "none"]), default="worst-case",
              show_default=True,
              help="Which defended rows get 95% bootstrap intervals (about half a second per row).")
def leaderboard(results, fmt, output_dir, name, plot, budget_param, check_csv, tolerance, any_change, intervals):
    """Print the leaderboard of RESULTS (a results .jsonl): one row per domain, defense, attack and threat model."""
    from advbench.curves import record_curve
    from advbench.leaderboard import build_leaderboard, to_csv, to_markdown, write_leaderboard
    from advbench.plots import plot_budget_curves, plot_curves, plot_leaderboard, plot_sensitivity

    from advbench.validation import check_output_dir, check_tolerance

    if plot and not output_dir:
        raise UserError("--plot writes image files and needs --output-dir DIR")
    check_tolerance(tolerance)
    if output_dir:
        check_output_dir(output_dir, "leaderboard output folder", "pass a writable folder with --output-dir")
    if check_csv:
        from advbench.regression import read_baseline

        read_baseline(Path(check_csv))
    records = load_records(results)
    df = build_leaderboard(records, intervals)
    click.echo(to_markdown(df) if fmt == "md" else to_csv(df), nl=False)
    if output_dir:
        name = name or Path(results).stem
        written = list(write_leaderboard(df, output_dir, name))
        if plot:
            written.append(plot_leaderboard(df, Path(output_dir) / f"{name}.png"))
            budgets = {r["cell"]["attack"]["params"].get(budget_param) for r in records}
            if any(len(record_curve(r)) > 1 for r in records):
                written.append(plot_curves(records, Path(output_dir) / f"{name}-curves.png"))
            elif len(budgets - {None}) > 1:
                written.append(plot_budget_curves(records, Path(output_dir) / f"{name}-budget.png", budget_param))
            else:
                click.echo(f"budget plot skipped: fewer than two values of attack parameter '{budget_param}'", err=True)
            sensitivity = plot_sensitivity(records, Path(output_dir) / f"{name}-sensitivity.png")
            if sensitivity is not None:
                written.append(sensitivity)
        click.echo("wrote " + ", ".join(str(p) for p in written), err=True)
    if check_csv and not check_command(records, check_csv, tolerance, any_change=any_change):
        sys.exit(1)


leaderboard.context_class = _SamePathContext


@leaderboard_group.command("merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Write <name>.csv and <name>.md into this folder.")
@click.option("--name", default="standard", show_default=True, help="Base name of the written files.")
@click.option("--ratings", default=None, type=click.Path(dir_okay=False),
              help="Human-ratings CSV (from `advbench humaneval import`) to join as human_* columns.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True,
              help="What to print to stdout.")
def merge(results, output_dir, name, ratings, fmt):
    """Join several results files (RESULTS…) into the standard leaderboard: one row per domain, defense, attack
    and threat model, ranked per domain, attack and threat model, with provenance columns.

    Files of different worlds or base models in one domain, or one cell measured differently in two files, are
    refused with both files named. Definitions: docs/definitions.md, section "Standard leaderboard".
    """
    from advbench.standard import build_standard, load_sources, merge_records, read_ratings, write_standard
    from advbench.standard_md import standard_markdown
    from advbench.validation import check_output_dir

    if output_dir:
        check_output_dir(output_dir, "leaderboard output folder", "pass a writable folder with --output-dir")
    table = read_ratings(ratings) if ratings else None
    df = build_standard(merge_records(load_sources(list(results))), table)
    for label in df.attrs.get("unmatched_ratings", []):
        click.echo(f"Warning: ratings of '{label}' match no row of the leaderboard (not joined)", err=True)
    click.echo(standard_markdown(df) if fmt == "md" else df.to_csv(index=False), nl=False)
    if output_dir:
        written = write_standard(df, output_dir, name)
        click.echo("wrote " + ", ".join(str(p) for p in written), err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(leaderboard_group, "leaderboard")
