"""``advbench report RESULTS… -o report.html``: one self-contained HTML report of merged results files.

Everything heavy (pandas, matplotlib, jinja2) is imported inside the command, so ``advbench --help`` stays fast;
the report itself is built by :func:`advbench.report.write_report` (layout in ``docs/report.md``).
"""

from __future__ import annotations

import click


@click.command()
# Paths are plain strings: advbench.report checks them and says what is wrong in one line (click's own checks
# would print a usage block).
@click.argument("results", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="The HTML file to write (replaced atomically).")
@click.option("--cache", "cache_dir", default=None,
              help="Stage cache to read FreezeAsGuard's frozen_by_block.csv from when a record does not carry its "
                   "mask [default: $ADVBENCH_CACHE or .advbench_cache].")
@click.option("--ratings", default=None,
              help="Human ratings CSV written by `advbench humaneval import`: adds their columns to the table.")
@click.option("--title", default=None, help="The report's title [default: the results files' names].")
def report(results, output, cache_dir, ratings, title):
    """Write one HTML file (no network needed to view it) for RESULTS (one or more .jsonl): the merged standard
    leaderboard as a sortable table, per domain a Pareto plot and mitigation power against budget, image grids
    from the records' thumbnails, FreezeAsGuard's mask per UNet block, and where it all came from."""
    from advbench.report import write_report

    path = write_report(list(results), output, cache_dir=cache_dir, ratings=ratings, title=title)
    click.echo(f"wrote {path}", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(report)
