"""The root ``advbench`` group; commands are attached lazily so ``advbench --help`` stays fast."""

from __future__ import annotations

import sys

import click

from advbench import __version__
from advbench.errors import UserError


class Group(click.Group):
    """A click group that prints a :class:`UserError` as one line and exits with code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="advbench")
def cli():
    """Benchmark anti-adaptation defenses of text-to-image diffusion models."""


def _attach_commands() -> None:
    from advbench.cli import bench, cache, humaneval, leaderboard, listing, report, run, search

    for module in (run, bench, leaderboard, report, humaneval, search, listing, cache):
        module.attach(cli)
    from advbench.plugins import add_commands

    add_commands(cli)


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


def main() -> None:
    import warnings

    warnings.showwarning = _warn_in_one_line  # e.g. a torn last line of a results file: one line, not two
    try:
        _attach_commands()  # loads the plugins: a bad ADVBENCH_PLUGINS allow-list is reported here
    except UserError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    cli(prog_name="advbench")
