"""``advbench list`` (installed plugins) and ``advbench show KIND NAME`` (a plugin's parameters)."""

from __future__ import annotations

import click

KIND_CHOICES = ["defense", "attack", "dataset", "metric", "domain"]


@click.command(name="list")
@click.option("--kind", type=click.Choice(KIND_CHOICES), default=None, help="Only this kind.")
def list_plugins(kind):
    """List installed plugins of each kind with their source plugin and description (no torch import)."""
    from rich.console import Console
    from rich.table import Table

    from advbench.plugins import KINDS, registry

    console = Console()
    for k in [kind] if kind else KINDS:
        table = Table(title=f"{k}s", title_justify="left")
        table.add_column("name", style="bold", overflow="fold")
        table.add_column("plugin", overflow="fold")
        table.add_column("description", overflow="fold")
        for entry in registry(k).entries():
            table.add_row(entry.name, entry.source, entry.description)
        console.print(table)


@click.command()
@click.argument("kind", type=click.Choice(KIND_CHOICES))
@click.argument("name")
def show(kind, name):
    """Show a plugin's description and parameters (types, defaults, help)."""
    from rich.console import Console
    from rich.table import Table

    from advbench.params import describe
    from advbench.plugins import registry

    entry = registry(kind).entry(name)
    cls = entry.load()
    console = Console()
    console.print(f"[bold]{kind} {name}[/bold] (from plugin {entry.source})")
    doc = (cls.__doc__ or entry.description or "").strip()
    if doc:
        console.print(doc)
    extras = []
    for attr in ("higher_is_better", "measures", "recognition", "needs_references", "needs_prompts", "primary_metric",
                 "extra_metrics", "constraints_understood", "anytime"):
        if hasattr(cls, attr) and attr in _declared_attrs(kind):
            value = getattr(cls, attr)
            extras.append(f"{attr} = {sorted(value) if isinstance(value, frozenset) else value}")
    for line in extras:
        console.print(line)
    rows = describe(cls.Params)
    if not rows:
        console.print("(no parameters)")
        return
    table = Table(title="parameters", title_justify="left")
    for col in ("name", "type", "default", "help"):
        table.add_column(col, overflow="fold")  # long names wrap; nothing is cut with "…"
    for row in rows:
        table.add_row(row["name"], row["type"], row["default"], row["help"])
    console.print(table)


def _declared_attrs(kind: str) -> set[str]:
    return {"metric": {"higher_is_better", "measures", "recognition", "needs_references", "needs_prompts"},
            "domain": {"primary_metric", "extra_metrics"},
            "attack": {"constraints_understood", "anytime"}}.get(kind, set())


def attach(cli: click.Group) -> None:
    cli.add_command(list_plugins)
    cli.add_command(show)
