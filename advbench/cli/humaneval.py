"""``advbench humaneval export|import``: a blind rating form of generated images, and its answers as ratings.

The library is :mod:`advbench.humaneval` (imported only when a command runs, so ``--help`` stays light); the
workflow and the file formats are in docs/humaneval.md.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def humaneval():
    """Human evaluation as in FreezeAsGuard: export a blind 1-7 rating form, import the raters' answers."""


@humaneval.command("export")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The form page to write (e.g. form.html); its key <name>.key.json is written beside it.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the shuffled order (and of the draw with --max-per-row).")
@click.option("--max-per-row", type=int, default=None,
              help="At most this many images per leaderboard row and role (drawn with --seed); default all.")
@click.option("--force", is_flag=True, help="Replace an existing key file (answers to its form can then not be read).")
def export(results, out, seed, max_per_row, force):
    """Write a self-contained HTML rating form of the images in RESULTS (results .jsonl files with thumbnails).

    The page names no defense, attack or cell: send it to raters. Keep the key file: it maps the page's image ids
    back to the leaderboard rows and is needed by `advbench humaneval import`.
    """
    from advbench.cli.leaderboard import load_records
    from advbench.humaneval import check_key_free, export_form
    from advbench.validation import check_output_file

    hint = "pass a writable file with -o"
    check_output_file(out, "form page", hint)
    check_output_file(check_key_free(out, force), "form key", hint)
    records = []
    for path in results:
        loaded = load_records(path)
        missing = sum(1 for r in loaded if not r.get("thumbnails"))
        if missing:
            click.echo(f"Warning: {path}: {missing} of {len(loaded)} record(s) carry no thumbnails and are skipped",
                       err=True)
        records.extend(loaded)
    page, key_path, key, _ = export_form(records, out, seed=seed, max_per_row=max_per_row, force=force)
    rows = {tuple(v[k] for k in ("domain", "defense", "attack", "threat_model", "role"))
            for v in key["images"].values()}
    click.echo(f"wrote {page} ({len(key['images'])} images of {len(rows)} row/role groups, form {key['form_id']}) "
               f"and its key {key_path} (keep it, do not send it)")


@humaneval.command("import")
@click.argument("answers", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="The form's key file written by `advbench humaneval export` (<form>.key.json).")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The ratings CSV to write (joined by `advbench leaderboard merge --ratings`).")
def import_(answers, key_path, out):
    """Check the raters' ANSWERS files against the form key and write the mean ratings per row and role."""
    from advbench.humaneval import import_answers
    from advbench.validation import check_output_file

    check_output_file(out, "ratings file", "pass a writable file with -o")
    table, summary = import_answers(list(answers), key_path, out)
    for path, rater, rated, unanswered in summary:
        click.echo(f"{path}: {rater}: {rated} images rated, {unanswered} unanswered", err=True)
    if table.empty:
        click.echo("no image was rated: the ratings file has no rows", err=True)
    else:
        shown = table.copy()
        for col in ("concept_mean", "concept_std", "quality_mean", "quality_std"):
            shown[col] = shown[col].map(lambda v: f"{v:.2f}")
        click.echo(shown.to_markdown(index=False))
    click.echo(f"wrote {Path(out)}", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(humaneval)
