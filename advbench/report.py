"""The HTML report (``advbench report``): one self-contained file built from merged results files.

It holds the standard leaderboard (:mod:`advbench.standard`) as a sortable table, per domain a Pareto plot
(mitigation power against legal impact) and mitigation-power-vs-budget curves (:mod:`advbench.report_figures`),
per defended row an image grid from the records' ``thumbnails`` (before the attack, after it, and the undefended
model after the same attack), FreezeAsGuard's frozen fraction per UNet block, and a provenance footer. A reader
sees what the numbers mean next to the numbers, and can mail or archive the report as one file: every image is a
``data:`` URI and the little JavaScript and CSS are inline, so it never touches the network. Layout and
decisions: ``docs/report.md``. This module never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from advbench.errors import DataError, UserError
from advbench.leaderboard import BASELINE, KEYS, ROLES, _key
from advbench.safeio import atomic_write

NO_THUMBNAILS = "no thumbnails in this record (made before thumbnails existed)"
GRID_COLUMNS = ("before attack (protected model)", "after attack", "undefended, after attack")
FG_NAME = "freezeasguard"


# ------------------------------------------------------------------------------------------------ table
def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pm(row: pd.Series, prefix: str) -> dict[str, str]:
    """A "mean ± std" cell (``text`` the mean, ``std`` shown after it) sorted by its mean; ``n/a`` (sorted last)
    when the mean is missing."""
    mean, std = _number(row.get(f"{prefix}_mean")), _number(row.get(f"{prefix}_std"))
    if mean is None:
        return {"text": "n/a", "sort": "", "std": ""}
    return {"text": f"{mean:.3g}", "sort": repr(mean), "std": f"{std:.2g}" if std is not None else ""}


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA (the standard leaderboard's nullable ``rank`` and ``pareto``)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array: not a scalar, so not missing
        return False


def _plain(value: Any) -> dict[str, str]:
    if _missing(value):
        return {"text": "", "sort": "", "std": ""}
    number = _number(value)
    if number is not None and not isinstance(value, str):
        text = str(int(number)) if number.is_integer() else f"{number:.3g}"
        return {"text": text, "sort": repr(number), "std": ""}
    return {"text": str(value), "sort": str(value), "std": ""}


def rating_columns(df: pd.DataFrame) -> list[str]:
    """Prefixes ``P`` of the human-rating columns ``P_mean``/``P_std`` that the standard leaderboard joined from a
    ratings CSV (their names hold ``concept`` or ``quality``); empty when no ratings were given or none matched."""
    return [c[:-len("_mean")] for c in df.columns
            if c.endswith("_mean") and ("concept" in c or "quality" in c) and df[c].notna().any()]


def added_metrics(records: list[dict[str, Any]]) -> list[str]:
    """Names of the metrics the records' cells added to their domains' own (``--metric``, a spec's ``metrics``)."""
    return sorted({m["name"] for r in records for m in r["cell"].get("metrics") or [] if isinstance(m, dict)})


def table(df: pd.DataFrame, added: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The leaderboard as the template's table: ``columns`` (label, type ``number``/``text``, legend anchor) and
    ``rows`` (``key``: the row's KEYS joined by ``|``; ``cells``: text and sort value per column). Each metric in
    ``added`` (:func:`added_metrics`) gets an illegal and a legal column after the primary metric's."""
    from advbench.report_figures import is_pareto

    ratings = rating_columns(df)
    raters = "human_raters" in df.columns and df["human_raters"].notna().any()
    columns = [("domain", "text", ""), ("defense", "text", ""), ("attack", "text", ""),
               ("threat model", "text", "def-threat"), ("seeds", "number", "def-seeds"),
               ("MP", "number", "def-mp"), ("LI", "number", "def-li"), ("MP-AUC", "number", "def-auc"),
               ("rank", "number", "def-rank"), ("pareto", "text", "def-pareto"),
               ("primary metric", "text", "def-primary"), ("illegal", "number", "def-primary"),
               ("legal", "number", "def-primary")]
    added = [m for m in added if f"illegal_{m}_mean" in df.columns or f"legal_{m}_mean" in df.columns]
    arrows = {m: {True: " ↑", False: " ↓"}.get(df.attrs.get("higher_is_better", {}).get(m), "") for m in added}
    columns += [(f"{role} {m}{arrows[m]}", "number", "def-added") for m in added for role in ("illegal", "legal")]
    columns += [(p.replace("_", " "), "number", "def-ratings") for p in ratings]
    columns += [("raters", "number", "def-ratings")] if raters else []
    rows = []
    for _, row in df.iterrows():
        primary = str(row.get("primary_metric", ""))
        arrow = {True: " ↑", False: " ↓"}.get(df.attrs.get("higher_is_better", {}).get(primary), "")
        cells = [_plain(row[k]) for k in KEYS] + [_plain(row.get("n_seeds")), _pm(row, "mitigation_power"),
                                                   _pm(row, "legal_impact"), _pm(row, "mp_auc"),
                                                   _plain(row.get("rank"))]
        pareto = is_pareto(row.get("pareto", False))
        cells += [{"text": "★" if pareto else "", "sort": "yes" if pareto else "", "std": ""},
                  {"text": primary + arrow, "sort": primary, "std": ""},
                  _pm(row, f"illegal_{primary}"), _pm(row, f"legal_{primary}")]
        cells += [_pm(row, f"{role}_{m}") for m in added for role in ("illegal", "legal")]
        cells += [_pm(row, p) for p in ratings]
        cells += [_plain(row.get("human_raters"))] if raters else []
        rows.append({"key": "|".join(str(row[k]) for k in KEYS), "cells": cells})
    return {"columns": [{"label": c, "type": t, "anchor": a} for c, t, a in columns], "rows": rows}


# ---------------------------------------------------------------------------------------- thumbnails
def _png(b64: Any) -> str | None:
    """A thumbnail strip as a data URI, or None when it is not a base64 PNG (checked without decoding pixels)."""
    if not isinstance(b64, str) or not b64:
        return None
    try:
        head = base64.b64decode(b64[:16], validate=True)
    except (binascii.Error, ValueError):
        return None
    return "data:image/png;base64," + b64 if head.startswith(b"\x89PNG") else None


def _cell(record: dict[str, Any] | None, cls: str, slot: str, missing: str) -> dict[str, str]:
    """One grid cell: ``{"src": data URI, "note": None}`` or ``{"src": None, "note": why there is no image}``."""
    src, note = _cell_image(record, cls, slot, missing)
    return {"src": src, "note": note}


def _cell_image(record: dict[str, Any] | None, cls: str, slot: str, missing: str) -> tuple[str | None, str | None]:
    if record is None:
        return None, missing
    thumbs = record.get("thumbnails")
    if not isinstance(thumbs, dict) or not isinstance(thumbs.get("classes"), dict):
        return None, NO_THUMBNAILS
    entry = thumbs["classes"].get(cls)
    if not isinstance(entry, dict):
        return None, f"no thumbnails of class {cls} in this record"
    value = entry.get(slot)
    if value is None:
        return None, ("not generated: a cell with one budget scores no model before the attack"
                      if slot == "before" else "no images in this record")
    src = _png(value)
    return (src, None) if src else (None, "unreadable thumbnail (not a base64 PNG)")


def _reference(record: dict[str, Any], base: dict[str, Any] | None, cls: str) -> str | None:
    """The class's held-out reference strip as a data URI, from the defended record or else its baseline (records
    written before references were kept have none)."""
    for rec in (record, base):
        entry = ((rec or {}).get("thumbnails") or {}).get("classes", {}).get(cls)
        if isinstance(entry, dict) and (src := _png(entry.get("reference"))):
            return src
    return None


def _classes(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(class, role, prompt) of a record, illegal classes first, each role in the record's order."""
    thumbs = (record.get("thumbnails") or {}).get("classes") or {}
    found = [(c, v.get("role"), str((thumbs.get(c) or {}).get("prompt") or "")) for c, v in
             record["metrics"]["classes"].items()]
    found += [(c, v.get("role"), str(v.get("prompt") or "")) for c, v in thumbs.items()
              if c not in record["metrics"]["classes"] and isinstance(v, dict)]
    return [f for role in ROLES for f in found if f[1] == role]


def thumbnail_grids(records: list[dict[str, Any]], df: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per domain, ``{"grids": [...], "missing": [...]}``: one image grid per defended leaderboard row whose
    records carry thumbnails (rows = its illegal and legal classes, columns = before the attack on the protected
    model, after the attack, and the undefended model after the same attack: the ``none`` record of the same
    domain, attack, threat model and seed), and the titles of the rows none of whose records carry any (listed
    once instead of a grid of notes). One seed per grid: the lowest one the row and its baseline both have, else
    the row's lowest."""
    by_key: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        by_key[_key(rec)].setdefault(rec["cell"]["seed"], rec)
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"grids": [], "missing": []})
    for _, row in df.iterrows():
        key = tuple(str(row[k]) for k in KEYS)
        if key[1] == BASELINE or key not in by_key:
            continue
        seeds, base_seeds = by_key[key], by_key.get((key[0], BASELINE, key[2], key[3]), {})
        common = sorted(set(seeds) & set(base_seeds))
        seed = common[0] if common else min(seeds)
        record, base = seeds[seed], base_seeds.get(seed)
        title = f"{key[1]} vs {key[2]} ({key[3]}), seed {seed}"
        if not any(isinstance(r.get("thumbnails"), dict) for r in (record, base) if r is not None):
            out[key[0]]["missing"].append(title)
            continue
        no_base = f"no undefended ({BASELINE}) cell with seed {seed} in the results"
        rows = [{"cls": cls, "role": role, "prompt": prompt, "reference": _reference(record, base, cls),
                 "cells": [_cell(record, cls, "before", ""), _cell(record, cls, "after", ""),
                           _cell(base, cls, "after", no_base)]} for cls, role, prompt in _classes(record)]
        out[key[0]]["grids"].append({"title": title, "rows": rows})
    return dict(out)


# ------------------------------------------------------------------------------------ FreezeAsGuard mask
def _protect_key(record: dict[str, Any]) -> str | None:
    return next((s.get("key") for s in record.get("stages", []) if s.get("stage") == "protect"), None)


def _fractions_from_csv(path: Path) -> dict[str, float] | None:
    """``{block: frozen fraction}`` from FreezeAsGuard's ``frozen_by_block.csv`` (frozen_tensors / tensors per
    block); None when the file is missing or not such a table."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, index_col=0)
        return {str(b): float(f) / float(t) for b, f, t in zip(table.index, table["frozen_tensors"], table["tensors"])
                if float(t) > 0}
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def block_fractions(record: dict[str, Any], cache_dir: Path) -> dict[str, float] | None:
    """A FreezeAsGuard record's frozen fraction per UNet block: ``defense_info["frozen_by_block"]`` when the
    record carries it, else the protect stage's artifact ``<cache>/protect/<key>/artifacts/frozen_by_block.csv``;
    None when neither exists."""
    info = record.get("defense_info") or {}
    stored = info.get("frozen_by_block")
    if isinstance(stored, dict) and stored and all(_number(v) is not None for v in stored.values()):
        return {str(b): float(v) for b, v in stored.items()}
    key = _protect_key(record)
    return _fractions_from_csv(cache_dir / "protect" / key / "artifacts" / "frozen_by_block.csv") if key else None


def _is_masking(record: dict[str, Any]) -> bool:
    info = record.get("defense_info") or {}
    return (record["cell"]["defense"]["name"] == FG_NAME or "frozen_by_block" in info
            or "frozen_by_block.csv" in (info.get("artifacts") or []))


def mask_sections(records: list[dict[str, Any]], cache_dir: Path) -> dict[str, dict[str, list]]:
    """Per domain, ``{"masks": [{"title", "src"}], "missing": [labels]}``: one heatmap per FreezeAsGuard defense
    label (rows = UNet blocks, columns = seeds: the mask is learned once per defense, domain and seed, and every
    attack shares it), and the labels whose masks are in neither the records nor the cache (one note for all)."""
    from advbench.report_figures import mask_heatmap

    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        if _is_masking(rec):
            domain, defense = _key(rec)[:2]
            groups[(domain, defense)].setdefault(rec["cell"]["seed"], rec)
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"masks": [], "missing": []})
    for (domain, defense), seeds in sorted(groups.items()):
        columns = {f"seed {s}": f for s in sorted(seeds) if (f := block_fractions(seeds[s], cache_dir))}
        if columns:
            out[domain]["masks"].append({"title": f"{defense}: frozen fraction of tensors per UNet block",
                                         "src": mask_heatmap(columns, f"{domain} | {defense}")})
        else:
            out[domain]["missing"].append(defense)
    return dict(out)


# ------------------------------------------------------------------------------------------- the page
def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(sources: list[tuple[Path, list[dict[str, Any]]]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The footer: who generated the report (advbench version, git commit) and when, from which files (records,
    sha256), and which advbench versions and commits made the records."""
    from advbench import __version__
    from advbench.provenance import git_state

    git = git_state()
    made = sorted({(str(p.get("advbench_version")), str(p.get("git_commit") or "no git")[:12])
                   for p in (r.get("provenance") or {} for r in records)})
    return {"version": __version__, "commit": git["commit"], "dirty": git["dirty"],
            "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": str(p), "records": len(recs), "sha256": _sha(p) if p.is_file() else "n/a"}
                      for p, recs in sources],
            "records": len(records), "made_by": [f"advbench {v} at {c}" for v, c in made]}


def _definitions_href(out: Path) -> str | None:
    """A relative link from the report's folder to this checkout's ``docs/definitions.md`` (a file, not the
    network), or None when advbench is not run from a checkout."""
    import os

    docs = Path(__file__).resolve().parents[1] / "docs" / "definitions.md"
    if not docs.is_file():
        return None
    return os.path.relpath(docs, out.resolve().parent).replace(os.sep, "/")


def render(records: list[dict[str, Any]], df: pd.DataFrame, sources: list[tuple[Path, list[dict[str, Any]]]],
           cache_dir: Path, title: str, definitions_href: str | None = None) -> str:
    """The report's HTML text for ``records`` and their standard leaderboard ``df``."""
    import jinja2

    from advbench.report_figures import Styles, budget_plot, pareto_plot, score_name

    styles = Styles(list(df["defense"]), list(df["attack"]))
    grids, masks = thumbnail_grids(records, df), mask_sections(records, cache_dir)
    domains = []
    for domain, part in df.groupby("domain", sort=False):
        images = grids.get(domain, {"grids": [], "missing": []})
        mask = masks.get(domain, {"masks": [], "missing": []})
        domains.append({"name": domain, "pareto": pareto_plot(part, domain, styles),
                        "budget": budget_plot(part, domain, styles), "grids": images["grids"],
                        "missing": images["missing"], "masks": mask["masks"], "no_mask": mask["missing"]})
    rank_by = [score_name(v) for v in dict.fromkeys(df.get("rank_by", pd.Series(dtype=str)).dropna()) if v]
    env = jinja2.Environment(loader=jinja2.PackageLoader("advbench", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    from advbench.headline import HEADER, INTRO, headline_rows

    return env.get_template("report.html.j2").render(
        headline={"columns": HEADER, "rows": headline_rows(df), "intro": INTRO},
        title=title, table=table(df, added_metrics(records)), domains=domains, grid_columns=GRID_COLUMNS, rank_by=rank_by,
        ratings=bool(rating_columns(df)), definitions=definitions_href, provenance=provenance(sources, records),
        cache=str(cache_dir))


def write_report(results: list[str | Path], out: str | Path, cache_dir: str | Path | None = None,
                 ratings: str | Path | None = None, title: str | None = None) -> Path:
    """Merge the results files, build their standard leaderboard (joined with the human ratings CSV when given)
    and write the report to ``out`` atomically; returns its path. Bad input is a one-line :class:`UserError`."""
    from advbench.cache import default_cache_dir
    from advbench.standard import build_standard, load_sources, merge_records
    from advbench.validation import check_output_file

    out = Path(out)
    if not results:
        raise UserError("name at least one results file (.jsonl) to report on")
    check_output_file(out, "report file", "pass a writable .html path with -o")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise UserError(f"stage cache {cache} is a file, not a folder; pass the cache folder with --cache")
    table_ratings = None
    if ratings is not None:
        from advbench.humaneval import read_ratings

        table_ratings = read_ratings(ratings)
    sources = load_sources(list(results))
    records = merge_records(sources)
    if not records:
        raise DataError("the results files hold no records; run `advbench run` or `advbench bench` first")
    df = build_standard(records, table_ratings)
    title = title or "advbench report: " + ", ".join(Path(p).name for p, _ in sources)
    html = render(records, df, sources, cache, title, _definitions_href(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, html.encode("utf-8"))
    return out
