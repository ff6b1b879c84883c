"""The standard leaderboard: several results files joined into one ranked table, with provenance.

``advbench leaderboard merge A.jsonl B.jsonl …`` concatenates the records of several results files (one
experiment each) and scores them with :func:`advbench.leaderboard.build_leaderboard`, so every number is the one
the per-file leaderboard would give on the concatenation; this module adds only what joining needs: refusing
files that must not be mixed (other world, other base model, the same cell measured differently), a rank and a
Pareto flag per (domain, attack, threat model), provenance and human-rating columns. Definitions of every column
are in ``docs/definitions.md`` ("Standard leaderboard"). This module never imports torch.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advbench.errors import DataError
from advbench.leaderboard import BASELINE, KEYS, _key, _label, build_leaderboard
from advbench.numerics import base_signature, check_comparable, signature
from advbench.safeio import atomic_write

#: A record's source files, added to the (copied) records by :func:`merge_records`.
SOURCES = "source_files"
GROUP = ["domain", "attack", "threat_model"]  # the rows a rank compares: one baseline, one attacker
RANK = ["rank", "rank_by", "pareto"]
PROVENANCE = ["advbench_version", "git_commits", "domain_version", "model_fingerprint", "sources"]
ROLES = ("illegal", "legal")
RATING_COLUMNS = ["domain", "defense", "attack", "threat_model", "role", "concept_mean", "concept_std",
                  "quality_mean", "quality_std", "raters", "ratings"]
#: What a record measured; two copies of one cell id must agree on all of it. Timings, hosts and git state
#: (``stages``, ``provenance``, ``started_at``…) may differ between two runs of one cell.
MEASURED = ("schema_version", "config_hash", "cell", "anytime", "metrics")
#: Two numbers of copies of one cell agree when within this relative tolerance, or within ATOL: a rerun of a cell
#: on CPU (other code version, other float summation order) gives the same numbers up to float32 round-off
#: (relative 1e-7 to 1e-5 seen), far below the 3 digits a leaderboard shows. KID, a difference of kernel sums near
#: 0, loses relative precision: 1.4e-4 relative (5e-7 absolute) was seen between two runs of one cell.
RTOL = 1e-4
ATOL = 1e-6
DIGITS = 12  # scores are compared rounded to this many decimals, so float noise never breaks a tie


def load_sources(paths: list[str | Path]) -> list[tuple[Path, list[dict[str, Any]]]]:
    """``[(path, records)]`` for every results file, in the order given (a missing or empty file: DataError)."""
    from advbench.cli.leaderboard import load_records

    if not paths:
        raise DataError("no results files given; pass one or more .jsonl files written by `advbench run`/`bench`")
    return [(Path(p), load_records(p)) for p in paths]


def same_measurement(a: Any, b: Any) -> bool:
    """Equal structure and values, numbers within :data:`RTOL` or :data:`ATOL` (NaN equals NaN; a bool is not a
    number)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_measurement(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_measurement(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    return type(a) is type(b) and a == b


def _without_per_image(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_per_image(v) for k, v in value.items() if k != "per_image"}
    if isinstance(value, list):
        return [_without_per_image(v) for v in value]
    return value


def _measured(rec: dict[str, Any]) -> dict[str, Any]:
    """What two copies of a cell must agree on: :data:`MEASURED` without the per-image values, which records
    written before score stage version 2 lack (their means are the class values, checked on read)."""
    return _without_per_image({k: rec.get(k) for k in MEASURED})


def _has_per_image(rec: dict[str, Any]) -> bool:
    return any("per_image" in row for row in rec["metrics"]["classes"].values())


def _budgets(rec: dict[str, Any]) -> Any:
    return rec["cell"].get("budgets")


def merge_records(sources: list[tuple[str | Path, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The records of all ``sources`` concatenated, each a shallow copy with :data:`SOURCES` (the files holding it).

    A cell id found in several files is kept once (the first file's copy, or the first with per-image values) when
    its measurement (:data:`MEASURED`, per-image values aside) is the same in all of them up to float round-off
    (:func:`same_measurement`); otherwise, and when two files put records in one domain that differ in world, base model, metric
    weights, advbench version or device type (:func:`advbench.numerics.signature`), or two records of one seed on
    the exposed base differ in that base (:func:`advbench.numerics.base_signature`), or two different cells in one
    row and seed, or one row at different budgets, a :class:`DataError` names both files.
    """
    kept: dict[str, dict[str, Any]] = {}
    first_file: dict[str, str] = {}
    every: list[tuple[dict[str, Any], str]] = []
    for path, records in sources:
        name = str(path)
        for rec in records:
            every.append((rec, name))
            cid = rec["cell_id"]
            if cid not in kept:
                kept[cid] = {**rec, SOURCES: [name]}
                first_file[cid] = name
            elif not same_measurement(_measured(kept[cid]), _measured(rec)):
                raise DataError(f"cell {cid} ('{_label(_key(rec))}', seed {rec['cell']['seed']}) is in {first_file[cid]} "
                                f"and {name} with different measurements; keep one of them (merge only files whose "
                                "shared cells agree)")
            else:
                if _has_per_image(rec) and not _has_per_image(kept[cid]):  # keep the copy intervals can resample
                    kept[cid] = {**rec, SOURCES: kept[cid][SOURCES]}
                if name not in kept[cid][SOURCES]:
                    kept[cid][SOURCES].append(name)
    _check_comparable(every)
    merged = list(kept.values())
    _check_slots(merged)
    for text in relabelled(merged):
        warnings.warn(text, stacklevel=2)
    return merged


def relabelled(records: list[dict[str, Any]]) -> list[str]:
    """One message per set of rows that hold the same cells under different labels (the same configuration
    shown, and ranked, more than once: e.g. one file's ``FG-30`` is another's ``FG[p=0.3]``)."""
    from advbench.results import config_hash

    rows: dict[str, dict[tuple, set[str]]] = defaultdict(dict)
    for rec in records:
        cell = {**rec["cell"], "defense": dict(rec["cell"]["defense"], label=None),
                "attack": dict(rec["cell"]["attack"], label=None)}
        rows[config_hash(cell)].setdefault(_key(rec), set()).update(rec.get(SOURCES) or [])
    found = {tuple(sorted((_label(k), ", ".join(sorted(f))) for k, f in keys.items()))
             for keys in rows.values() if len(keys) > 1}
    return [" = ".join(f"'{label}' ({files})" for label, files in group) + ": the same configuration under "
            "different labels; it has one row per label" for group in sorted(found)]


def _check_comparable(every: list[tuple[dict[str, Any], str]]) -> None:
    """:func:`advbench.numerics.check_comparable` per domain, naming the files (every copy of a cell counts)."""
    from advbench.cells import domain_key

    where = {id(rec): name for rec, name in every}
    check_comparable([rec for rec, _ in every], lambda rec: domain_key(rec["cell"]),
                     name_of=lambda rec: f"{where[id(rec)]} (cell {rec['cell_id']})",
                     hints={signature: "merge only results of one world and model",
                            base_signature: "that seed's exposed base was rebuilt between them (another package "
                                            "version or machine); merge only results built on one exposed base"})


def _check_slots(records: list[dict[str, Any]]) -> None:
    """Two different cells in one row and seed, or one row at different budgets, named by their files."""
    slots: dict[tuple, dict[str, Any]] = {}
    rows: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        key = _key(rec)
        slot = (*key, rec["cell"]["seed"])
        other = slots.setdefault(slot, rec)
        if other is not rec:
            raise DataError(f"'{_label(key)}', seed {slot[4]} is cell {other['cell_id']} in {_files(other)} and cell "
                            f"{rec['cell_id']} in {_files(rec)} (different configurations); these files are separate "
                            "experiments: merge them separately or give the cells distinct labels")
        other = rows.setdefault(key, rec)
        if _budgets(other) != _budgets(rec):
            raise DataError(f"'{_label(key)}' has budgets {_budgets(other)} in {_files(other)} and {_budgets(rec)} in "
                            f"{_files(rec)}; merge only files that ran a row at the same budgets")


def _files(rec: dict[str, Any]) -> str:
    return " and ".join(rec.get(SOURCES) or ["(no file)"])


def _join(values: Any) -> str:
    """Distinct non-empty values, sorted, joined with ``;`` (empty when none was recorded)."""
    return ";".join(sorted({str(v) for v in values if v not in (None, "")}))


def _provenance(records: list[dict[str, Any]]) -> dict[str, str]:
    provs = [r.get("provenance") or {} for r in records]
    commits = [(p["git_commit"][:12] + ("+dirty" if p.get("git_dirty") else "")) if p.get("git_commit") else None
               for p in provs]
    return {"advbench_version": _join(p.get("advbench_version") for p in provs),
            "git_commits": _join(commits),
            "domain_version": _join(p.get("domain_version") for p in provs),
            "model_fingerprint": _join((p.get("model_fingerprint") or "")[:12] for p in provs),
            "sources": _join(s for r in records for s in r.get(SOURCES) or [])}


def _budget_list(text: Any) -> tuple[float, ...]:
    if not isinstance(text, str) or not text:
        return ()
    return tuple(float(b) for b in text.split(","))


def _budget_text(budget: float) -> str:
    return str(int(budget)) if float(budget).is_integer() else f"{budget:g}"


def score_columns(rows: pd.DataFrame) -> tuple[str, str]:
    """(MP column, LI column) that rank the defended ``rows`` of one group (see docs/definitions.md).

    MP-AUC (with LI at the final budget) when every row has the same curve of more than one budget; else MP and LI
    at the final budget when all rows end at the same budget; else at the largest budget all rows have; else (no
    common budget) at each row's final budget.
    """
    budgets = [_budget_list(b) for b in rows["budgets"]] if "budgets" in rows else []
    if budgets and all(b == budgets[0] for b in budgets) and len(budgets[0]) > 1:
        return "mp_auc_mean", "legal_impact_mean"
    finals = {b[-1] for b in budgets if b}
    if len(finals) <= 1 or any(not b for b in budgets):
        return "mitigation_power_mean", "legal_impact_mean"
    shared = set(budgets[0]).intersection(*map(set, budgets[1:]))
    if not shared:
        return "mitigation_power_mean", "legal_impact_mean"
    b = _budget_text(max(shared))
    return f"mitigation_power_b{b}_mean", f"legal_impact_b{b}_mean"


def competition_rank(scores: list[float]) -> list[float]:
    """Rank 1 for the highest score, ties share the best rank and leave a gap (1, 2, 2, 4); NaN → NaN."""
    clean = [round(s, DIGITS) if s is not None and math.isfinite(s) else None for s in scores]
    return [float("nan") if s is None else 1.0 + sum(o is not None and o > s for o in clean) for s in clean]


def pareto_front(mp: list[float], li: list[float]) -> list[bool | None]:
    """Per row: True when no other row has MP ≥ and LI ≤ with one of them strict (MP higher is better, LI lower
    is better), False when one has; None when the row's MP or LI is NaN (such rows dominate nothing)."""
    pts = [(round(m, DIGITS), round(l, DIGITS)) if math.isfinite(m) and math.isfinite(l) else None
           for m, l in zip(mp, li)]
    out: list[bool | None] = []
    for p in pts:
        if p is None:
            out.append(None)
            continue
        out.append(not any(q is not None and q[0] >= p[0] and q[1] <= p[1] and q != p for q in pts))
    return out


def _rank(df: pd.DataFrame, baseline_keys: set[tuple]) -> pd.DataFrame:
    df = df.copy()
    df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df["rank_by"] = ""
    df["pareto"] = pd.array([pd.NA] * len(df), dtype="boolean")
    is_base = [tuple(r) in baseline_keys for r in df[KEYS].itertuples(index=False)]
    defended = df[~pd.Series(is_base, index=df.index)]
    for _, rows in defended.groupby(GROUP, sort=False):
        mp_col, li_col = score_columns(rows)
        mp = [float(v) for v in rows.get(mp_col, pd.Series(np.nan, index=rows.index))]
        li = [float(v) for v in rows.get(li_col, pd.Series(np.nan, index=rows.index))]
        ranks = competition_rank(mp)
        flags = pareto_front(mp, li)
        for index, rank, flag in zip(rows.index, ranks, flags):
            df.at[index, "rank_by"] = mp_col
            df.at[index, "rank"] = pd.NA if math.isnan(rank) else int(rank)
            df.at[index, "pareto"] = pd.NA if flag is None else flag
    return df


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    """Within build_leaderboard's order of (domain, attack, threat model): baseline first, then by rank (ties by
    defense label), unranked (NaN score) rows last."""
    group_order = {g: i for i, g in enumerate(dict.fromkeys(df[GROUP].itertuples(index=False)))}
    keyed = df.assign(_g=[group_order[tuple(g)] for g in df[GROUP].itertuples(index=False)],
                      _b=(df["rank_by"] != "").astype(int), _r=df["rank"].astype("Float64").fillna(np.inf))
    keyed = keyed.sort_values(["_g", "_b", "_r", "defense"], kind="mergesort")
    return keyed.drop(columns=["_g", "_b", "_r"]).reset_index(drop=True)


def read_ratings(path: str | Path) -> pd.DataFrame:
    """The human-ratings table of ``advbench humaneval import``, validated by
    :func:`advbench.humaneval.read_ratings` (imported here, when ratings are asked for)."""
    from advbench.humaneval import read_ratings as reader

    return reader(path)


def _join_ratings(df: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    """Add human_{role}_{concept|quality}_{mean|std} and human_raters (the most raters of either role)."""
    missing = [c for c in RATING_COLUMNS if c not in ratings.columns]
    if missing:
        raise DataError(f"the ratings table lacks the columns {missing}")
    bad = sorted(set(ratings["role"].astype(str)) - set(ROLES))
    if bad:
        raise DataError(f"the ratings table has roles {bad}; a role is 'illegal' or 'legal'")
    df = df.copy()
    values: dict[str, dict[tuple, float]] = defaultdict(dict)
    raters: dict[tuple, int] = {}
    seen: set[tuple] = set()
    for row in ratings.itertuples(index=False):
        key = tuple(str(getattr(row, k)) for k in KEYS)
        if (key, row.role) in seen:
            raise DataError(f"the ratings table has two rows for '{_label(key)}', role {row.role}")
        seen.add((key, row.role))
        for what in ("concept", "quality"):
            for stat in ("mean", "std"):
                values[f"human_{row.role}_{what}_{stat}"][key] = float(getattr(row, f"{what}_{stat}"))
        if not pd.isna(row.raters):
            raters[key] = max(raters.get(key, 0), int(row.raters))
    keys = [tuple(str(v) for v in r) for r in df[KEYS].itertuples(index=False)]
    for role in ROLES:
        for what in ("concept", "quality"):
            for stat in ("mean", "std"):
                column = f"human_{role}_{what}_{stat}"
                df[column] = [values[column].get(k, float("nan")) for k in keys]
    df["human_raters"] = pd.array([raters.get(k, pd.NA) for k in keys], dtype="Int64")
    df.attrs["unmatched_ratings"] = sorted(_label(k) for k in {k for k, _ in seen} - set(keys))
    return df


def build_standard(records: list[dict[str, Any]], ratings: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per :data:`advbench.leaderboard.KEYS`: every column of ``build_leaderboard(records)``, then
    ``rank``, ``rank_by``, ``pareto``, the :data:`PROVENANCE` columns and, with ``ratings`` (the contract-4 table),
    the human-rating columns. Rows are ordered by domain, attack, threat model, baseline first, then rank."""
    board = build_leaderboard(records)
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    baseline_keys = set()
    for rec in records:
        by_key[_key(rec)].append(rec)
        if rec["cell"]["defense"]["name"] == BASELINE:
            baseline_keys.add(_key(rec))
    df = _rank(board, baseline_keys)
    prov = [_provenance(_unique_ids(by_key[tuple(k)])) for k in df[KEYS].itertuples(index=False)]
    for column in PROVENANCE:
        df[column] = [p[column] for p in prov]
    rest = [c for c in board.columns if c not in KEYS]
    df = _sort(df[[*KEYS, *RANK, *rest, *PROVENANCE]])
    df.attrs.update(board.attrs)
    if ratings is not None:
        df = _join_ratings(df, ratings)
    return df


def _unique_ids(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["cell_id"]: r for r in records}.values())


def write_standard(df: pd.DataFrame, out_dir: str | Path, name: str = "standard") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` (every column, full precision) and ``<name>.md`` atomically."""
    from advbench.standard_md import standard_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    atomic_write(csv_path, df.to_csv(index=False).encode())
    atomic_write(md_path, standard_markdown(df).encode())
    return csv_path, md_path


def standard_markdown(df: pd.DataFrame) -> str:
    """The standard leaderboard as Markdown: a legend, then one table per domain (see :mod:`advbench.standard_md`)."""
    from advbench.standard_md import standard_markdown as render

    return render(df)
