"""``advbench cache info`` (what the stage cache holds, per stage) and ``advbench cache prune`` (free space)."""

from __future__ import annotations

import re

import click

from advbench.errors import UserError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CACHE_DIR_HELP = "Stage cache folder (default: $ADVBENCH_CACHE or .advbench_cache)."


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w``, ``90s`` (a non-negative number and one unit) → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not match:
        raise UserError(f"--older-than {text!r} is not an age; use a number and a unit, e.g. 30m, 12h, 7d or 2w "
                        "(units: s, m, h, d, w)")
    return float(match.group(1)) * UNITS[match.group(2)]


def _cache(cache_dir: str | None):
    from advbench.cache import StageCache, default_cache_dir

    return StageCache(cache_dir if cache_dir is not None else default_cache_dir())


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _cells(row: dict[str, int]) -> list[str]:
    other = f"{row['other']} ({_size(row['other_bytes'])})" if row["other"] else "0"
    return [str(row["entries"]), _size(row["bytes"]), other, str(row["stale"])]


@click.group(name="cache")
def cache_group():
    """Inspect and prune the stage cache."""


@cache_group.command()
@click.option("--cache-dir", default=None, help=CACHE_DIR_HELP)
def info(cache_dir):
    """Entries and sizes per stage, and temporary/incomplete folders (left by killed runs or running builds)."""
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    cache = _cache(cache_dir)
    stats = cache.info()
    console = Console()
    if not stats:
        why = "holds no stages" if cache.root.exists() else "does not exist"
        click.echo(f"cache {cache.root} is empty (the folder {why})")
        return
    now = time.time()
    table = Table(title=f"stage cache {escape(str(cache.root))}", title_justify="left")
    table.add_column("stage", no_wrap=True)
    for name in ("entries", "size", "temp/incomplete", "stale"):
        table.add_column(name, justify="right", no_wrap=True)
    total = {"entries": 0, "bytes": 0, "other": 0, "other_bytes": 0, "stale": 0}
    for st in stats:
        row = {"entries": st.entries, "bytes": st.bytes, "other": st.temp + st.incomplete,
               "other_bytes": st.temp_bytes + st.incomplete_bytes, "stale": st.stale + st.incomplete}
        table.add_row(escape(st.stage) + ("" if st.managed else " *"), *_cells(row))
        for key, value in row.items():
            total[key] += value
    table.add_row("total", *_cells(total), style="bold")
    console.print(table)
    if any(not st.managed for st in stats):
        click.echo("* a plugin's own cache: prune touches it only with --stage NAME")
    oldest = min((st.oldest for st in stats if st.oldest is not None), default=None)
    if oldest is not None:
        newest = max(st.newest for st in stats if st.newest is not None)
        click.echo(f"entries last built or used {_age(now - newest)} to {_age(now - oldest)} ago "
                   "(see prune --older-than)")
    if total["stale"]:
        click.echo("`advbench cache prune` removes the stale temporary and incomplete folders")


@cache_group.command()
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="Remove this stage's complete entries too (repeatable); with --older-than only the old ones.")
@click.option("--older-than", default=None, metavar="AGE",
              help="Remove complete entries last built or used more than AGE ago (e.g. 30m, 12h, 7d, 2w).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--cache-dir", default=None, help=CACHE_DIR_HELP)
def prune(stages, older_than, dry_run, cache_dir):
    """Remove stale temporary folders (killed builds) and incomplete entries; with --stage and/or --older-than,
    complete entries too. Temporary folders of running builds are kept; do not remove complete entries while a
    run uses this cache."""
    seconds = parse_age(older_than) if older_than is not None else None
    cache = _cache(cache_dir)
    removed = cache.prune(stages=list(stages) or None, older_than_seconds=seconds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        click.echo(f"{verb} {item.path} ({_size(item.bytes)}): {item.why}")
    freed = sum(item.bytes for item in removed)
    click.echo(f"{verb} {len(removed)} folder(s), {_size(freed)} from {cache.root}"
               + (" (dry run: nothing was removed)" if dry_run else ""))


def attach(cli: click.Group) -> None:
    cli.add_command(cache_group)
