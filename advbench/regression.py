"""The regression check: compare a leaderboard with a saved leaderboard CSV (``--check``).

A defense regressed when its mitigation power (final budget) or MP-AUC dropped, or its legal impact rose, by more
than the tolerance, or when a saved row is missing now (``docs/definitions.md``, "Regression check"). With
``any_change`` (``--any-change``, the CI regression benchmark) a move either way is flagged, and the primary
metric's own illegal/legal values are compared too (relatively), so a change that shifts the defended and the
undefended cells alike, leaving the relative scores where they were, is caught as well.
This module never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from advbench.errors import DataError, UserError
from advbench.leaderboard import BASELINE, KEYS, _label


def read_baseline(path: Path) -> pd.DataFrame:
    fix = "pass a CSV written by `advbench leaderboard --output-dir`"
    if not path.is_file():
        raise DataError(f"baseline leaderboard {path} not found; {fix}")
    try:
        base = pd.read_csv(path, dtype={k: str for k in KEYS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"baseline leaderboard {path} is not a readable CSV ({reason}); {fix}") from None
    missing = [c for c in [*KEYS, "mitigation_power_mean", "legal_impact_mean"] if c not in base.columns]
    if missing:
        raise DataError(f"baseline leaderboard {path} lacks columns {', '.join(missing)}; {fix}")
    for column in ("mitigation_power_mean", "legal_impact_mean", "mp_auc_mean"):
        if column not in base.columns:  # mp_auc_mean is optional: CSVs written before anytime curves lack it
            continue
        numbers = pd.to_numeric(base[column], errors="coerce")
        if (numbers.isna() & base[column].notna()).any():
            raise DataError(f"baseline leaderboard {path}: column {column} holds non-numbers; {fix}")
        base[column] = numbers
    if base[KEYS].isna().any().any():
        raise DataError(f"baseline leaderboard {path} has rows with an empty {'/'.join(KEYS)} cell; {fix}")
    duplicated = base.duplicated(KEYS)
    if duplicated.any():
        key = tuple(base.loc[duplicated, KEYS].iloc[0])
        raise DataError(f"baseline leaderboard {path} lists '{_label(key)}' twice; {fix}")
    return base


def check_regressions(current_df: pd.DataFrame, baseline_csv_path: str | Path, tolerance: float = 0.05,
                      any_change: bool = False) -> list[str]:
    """Compare with a saved leaderboard CSV; one message per regression (an empty list means none).

    Every baseline row must be present; its mitigation power may not drop, nor its legal impact rise, by more
    than ``tolerance`` (absolute); when both leaderboards have ``mp_auc_mean``, it may not drop by more than
    ``tolerance`` either. A NaN score in the baseline is not checked. With ``any_change`` these three may not
    move by more than ``tolerance`` in either direction, and the mean of the row's primary metric over the
    illegal and over the legal classes may not move by more than ``tolerance`` times its saved value.
    """
    if not (tolerance >= 0):
        raise UserError(f"tolerance must be a non-negative number, got {tolerance}")
    base = read_baseline(Path(baseline_csv_path))
    current = {tuple(str(v) for v in row[KEYS]): row for _, row in current_df.iterrows()}
    slack = tolerance + 1e-9  # CSV round trips may move the last bit
    problems = []
    for _, brow in base.iterrows():
        key = tuple(brow[KEYS])
        label = _label(key)
        if key not in current:
            problems.append(f"{label}: in the baseline but missing from the current results")
            continue
        crow = current[key]
        for column, word, worse in (("mitigation_power_mean", "mitigation power", "dropped"),
                                    ("legal_impact_mean", "legal impact", "rose"),
                                    ("mp_auc_mean", "MP-AUC", "dropped")):
            if column not in brow.index or column not in crow.index:
                continue
            old, new = float(brow[column]), float(crow[column])
            if math.isnan(old):
                continue
            if math.isnan(new):
                problems.append(f"{label}: {word} cannot be computed now (baseline {old:.4g}); "
                                f"are the '{BASELINE}' cells missing?")
            elif any_change and abs(new - old) > slack:
                problems.append(f"{label}: {word} moved from {old:.4g} to {new:.4g} "
                                f"(more than the tolerance {tolerance:g})")
            elif (old - new if worse == "dropped" else new - old) > slack:
                problems.append(f"{label}: {word} {worse} from {old:.4g} to {new:.4g} "
                                f"(more than the tolerance {tolerance:g})")
        if any_change:
            problems += _metric_moves(label, brow, crow, tolerance)
    return problems


def _metric_moves(label: str, brow: pd.Series, crow: pd.Series, tolerance: float) -> list[str]:
    """The row's primary metric (illegal and legal means) moved by more than ``tolerance`` relative to the saved
    value (a metric's scale is its own: 0.2 for a distance, 40 for a CLIP score)."""
    primary = brow.get("primary_metric")
    if not isinstance(primary, str):
        return []
    out = []
    for role in ("illegal", "legal"):
        column = f"{role}_{primary}_mean"
        if column not in brow.index or column not in crow.index:
            continue
        old, new = float(brow[column]), float(crow[column])
        if math.isnan(old):
            continue
        if math.isnan(new) or abs(new - old) > tolerance * abs(old) + 1e-9:
            out.append(f"{label}: {role} {primary} moved from {old:.4g} to {new:.4g} "
                       f"(more than {tolerance:g} of its saved value)")
    return out
