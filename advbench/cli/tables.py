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
    table.add_column("class", overflow="fold")
    table.add_column("role", overflow="fold")
    for n in names:
        table.add_column(f"{n} {_arrow(metrics, n)}{' (primary)' if n == metrics['primary'] else ''}",
                         justify="right", overflow="fold")
    for role in ("illegal", "legal"):
        for cls, row in metrics["classes"].items():
            if row["role"] == role:
                table.add_row(_fmt(cls), role, *[_fmt(row["values"][n]) for n in names])
    for role in ("illegal", "legal"):
        if metrics[role]:
            table.add_row(f"[bold]mean {role}[/bold]", role, *[f"[bold]{_fmt(metrics[role][n])}[/bold]" for n in names])
    console.print(table)
    curve = metrics.get("curve", [])
    if len(curve) > 1:
        primary = metrics["primary"]
        steps = Table(title=escape(f"{primary} {_arrow(metrics, primary)} at each attack budget"))
        for col in ("steps", "illegal", "legal"):
            steps.add_column(col, justify="right", overflow="fold")
        for point in curve:
            steps.add_row(str(point["budget"]), _fmt(point["illegal"].get(primary, "")),
                          _fmt(point["legal"].get(primary, "")))
        console.print(steps)
    seconds = {}
    for stage in record["stages"]:
        seconds[stage["stage"]] = seconds.get(stage["stage"], 0.0) + stage["seconds"]
    console.print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
                  + f"; total {record['total_seconds']:.1f}")


def _arrow(metrics: dict[str, Any], name: str) -> str:
    return "↑" if metrics["higher_is_better"][name] else "↓"


def print_verdict(record: dict[str, Any], baseline: dict[str, Any], console: Console | None = None) -> None:
    """The defended cell against the undefended one: MP and LI per budget, MP-AUC, delays, selectivity."""
    from advbench.curves import compare_to_baseline, format_delay

    console = console or Console()
    verdict = compare_to_baseline(record, baseline)
    primary = verdict["primary"]
    table = Table(title=escape(f"Verdict: {record['cell']['defense']['label']} against no defense, "
                               f"{primary} {_arrow(record['metrics'], primary)}"))
    for col in ("steps", "illegal", "no def.", "legal", "no def.", "MP ↑", "LI →0"):
        table.add_column(col, justify="right", overflow="fold")
    for row in verdict["rows"]:
        table.add_row(*[_fmt(row[k]) if row[k] is not None else "-" for k in
                        ("budget", "illegal", "baseline_illegal", "legal", "baseline_legal", "mitigation_power",
                         "legal_impact")])
    console.print(table)
    lines = [f"MP-AUC {verdict['mp_auc']:.3g}"]
    if verdict["illegal_delay"].defined:
        ref = verdict["ref_budget"]
        lines.append(f"illegal delay {format_delay(verdict['illegal_delay'])} (steps needed to reach what no "
                     f"defense reached at {ref:.0f}, ÷ {ref:.0f}); legal delay {format_delay(verdict['legal_delay'])}; "
                     f"selectivity {format_delay(verdict['selectivity'])}")
    console.print("; ".join(lines))
    auc = verdict["mp_auc"]
    meaning = ("no mitigation: the attacker forges the illegal class as well as without the defense"
               if not auc > 0.05 else "the defense made the illegal forgery worse (MP > 0)")
    console.print(f"MP > 0: the defense hurt the attacker on the illegal classes; LI > 0: it hurt honest "
                  f"fine-tuning on the legal ones; delay > 1: it slowed the attacker down. Here: {meaning}.")
    if verdict.get("exact") is False:
        console.print("note: the attack's learning-rate schedule spans the whole run, so a budget's snapshot is "
                      "not exactly a shorter attack")


def cells_table(rows: list[dict[str, Any]], title: str) -> Table:
    """A table of finished cells for ``advbench bench``'s live display."""
    table = Table(title=title)
    for col in ("domain", "defense", "attack", "threat", "seed", "illegal", "legal", "seconds", "status"):
        table.add_column(col, overflow="fold")  # long names wrap; nothing is cut with "…"
    for row in rows:
        table.add_row(*[_fmt(row.get(k, "")) for k in
                        ("domain", "defense", "attack", "threat", "seed", "illegal", "legal", "seconds", "status")])
    return table
