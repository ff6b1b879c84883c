"""Rich tables shared by the commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(value: Any) -> str:
    # Labels such as "fullft[steps=100]" would otherwise be read as rich markup and vanish.
    return f"{value:.4g}" if isinstance(value, (int, float)) else escape(str(value))


def print_record(record: dict[str, Any], console: Console | None = None) -> None:
    """Per-class metric values of one cell, then the illegal and legal means."""
    console = console or Console()
    metrics = record["metrics"]
    names = list(metrics["higher_is_better"])
    cell = record["cell"]
    table = Table(title=escape(f"{cell['domain']['name']}: {cell['defense']['label']} vs {cell['attack']['label']} "
                               f"({cell['threat_model']}, seed {cell['seed']})"))
    table.add_column("class")
    table.add_column("role")
    for n in names:
        arrow = "↑" if metrics["higher_is_better"][n] else "↓"
        table.add_column(f"{n} {arrow}{' (primary)' if n == metrics['primary'] else ''}", justify="right")
    for role in ("illegal", "legal"):
        for cls, row in metrics["classes"].items():
            if row["role"] == role:
                table.add_row(_fmt(cls), role, *[_fmt(row["values"][n]) for n in names])
    for role in ("illegal", "legal"):
        if metrics[role]:
            table.add_row(f"[bold]mean {role}[/bold]", role, *[f"[bold]{_fmt(metrics[role][n])}[/bold]" for n in names])
    console.print(table)
    seconds = {}
    for stage in record["stages"]:
        seconds[stage["stage"]] = seconds.get(stage["stage"], 0.0) + stage["seconds"]
    console.print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
                  + f"; total {record['total_seconds']:.1f}")


def cells_table(rows: list[dict[str, Any]], title: str) -> Table:
    """A table of finished cells for ``advbench bench``'s live display."""
    table = Table(title=title)
    for col in ("domain", "defense", "attack", "threat", "seed", "illegal", "legal", "seconds", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(row.get(k, "")) for k in
                        ("domain", "defense", "attack", "threat", "seed", "illegal", "legal", "seconds", "status")])
    return table
