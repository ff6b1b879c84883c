"""Anytime attack curves: the hand-computed worked example of docs/definitions.md, bounds, schema-1 records,
the leaderboard's per-budget columns, compare_to_baseline and the curves plot.

Every expected number below is a literal worked out by hand (arithmetic in the comments), never by calling the
code under test.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from advbench.cli import leaderboard as leaderboard_cli
from advbench.cli.main import cli
from advbench.curves import (Bounded, Delay, compare_to_baseline, delay_factor, format_delay, mp_auc, record_curve,
                             reference_budget, selectivity)
from advbench.errors import DataError
from advbench.leaderboard import build_leaderboard, to_csv, to_markdown
from advbench.regression import check_regressions
from advbench.plots import plot_curves
from advbench.results import cell_id, config_hash

from tests.test_results import make_record

CI = Path(__file__).resolve().parent.parent / "results" / "world-v4-fullft-lr5e-4" / "ci.jsonl"  # schema 1

# The worked example of docs/definitions.md: a lower-is-better distance at budgets 10, 20, 40, 80.
B = [10, 20, 40, 80]
U = [0.60, 0.30, 0.104, 0.10]    # undefended illegal
D = [0.90, 0.50, 0.20, 0.10]     # defended illegal
UL = [0.50, 0.25, 0.20, 0.20]    # undefended legal
DL = [0.55, 0.30, 0.21, 0.19]    # defended legal
NEVER = [0.90, 0.70, 0.40, 0.20]  # defended illegal that never reaches the target 0.104


def curve_record(defense, seed, budgets, illegal, legal, metric="dist", hib=None, exact=True, **kw):
    """A schema-2 record with one illegal class 'a' and one legal class 'b' at each budget."""
    hib = hib or {metric: False}
    rec = make_record(defense=defense, seed=seed, illegal={"a": {metric: illegal[-1]}},
                      legal={"b": {metric: legal[-1]}}, higher_is_better=hib, primary=metric,
                      attack_params={"steps": budgets[-1]}, **kw)
    rec["schema_version"] = 2
    rec["cell"]["budgets"] = list(budgets)
    rec["cell_id"], rec["config_hash"] = cell_id(rec["cell"]), config_hash(rec["cell"])
    rec["metrics"]["curve"] = [
        {"budget": b, "classes": {"a": {"role": "illegal", "values": {metric: i}},
                                  "b": {"role": "legal", "values": {metric: g}}},
         "illegal": {metric: i}, "legal": {metric: g}} for b, i, g in zip(budgets, illegal, legal)]
    rec["anytime"] = {"budget_param": "steps", "exact": exact, "note": "constant learning rate"}
    return rec


# --- the worked example ---------------------------------------------------------------------------------------

def test_reference_budget_worked_example():
    # best = min U = 0.10; 5 % of it = 0.005; |0.60-0.10| = 0.5, |0.30-0.10| = 0.2, |0.104-0.10| = 0.004 <= 0.005
    assert reference_budget(B, U, higher_is_better=False) == 40
    # legal: best 0.20, 5 % = 0.01; |0.25-0.20| = 0.05 > 0.01, |0.20-0.20| = 0
    assert reference_budget(B, UL, higher_is_better=False) == 40
    # a looser tolerance accepts an earlier budget: |0.30-0.10| = 0.2 <= 2.5 * 0.10
    assert reference_budget(B, U, False, tolerance=2.5) == 20
    # a plateau from the start: the first budget
    assert reference_budget(B, [0.3, 0.3, 0.3, 0.3], False) == 10


def test_delay_worked_example_interpolates_on_log_budget():
    d = delay_factor(B, U, D, higher_is_better=False)
    # target = U(40) = 0.104; D first reaches it at 80 (0.10), after 0.20 at 40:
    # t = (0.20 - 0.104) / (0.20 - 0.10) = 0.96; b* = 40 * 2**0.96 = 40 * 1.94531 = 77.812; delay = 1.94531
    assert d.bound == "=" and d.ref_budget == 40 and d.target == 0.104
    assert d.value == pytest.approx(1.94531, abs=1e-5)
    assert format_delay(d) == "1.95"
    legal = delay_factor(B, UL, DL, higher_is_better=False)
    # target 0.20; t = (0.21 - 0.20) / (0.21 - 0.19) = 0.5; b* = 40 * sqrt(2) = 56.569; delay = 1.41421
    assert legal.bound == "=" and legal.value == pytest.approx(1.41421, abs=1e-5)


def test_mp_per_budget_and_mp_auc_worked_example():
    result = compare_to_baseline(curve_record("guard", 0, B, D, DL), curve_record("none", 0, B, U, UL))
    rows = result["rows"]
    assert [r["budget"] for r in rows] == B
    # MP = (D - U) / U: 0.3/0.6 = 0.5, 0.2/0.3 = 0.66667, 0.096/0.104 = 12/13 = 0.923077, 0/0.1 = 0
    assert [r["mitigation_power"] for r in rows] == pytest.approx([0.5, 0.666667, 0.923077, 0.0], abs=1e-6)
    # LI = (DL - UL) / UL: 0.05/0.5 = 0.1, 0.05/0.25 = 0.2, 0.01/0.2 = 0.05, -0.01/0.2 = -0.05
    assert [r["legal_impact"] for r in rows] == pytest.approx([0.1, 0.2, 0.05, -0.05], abs=1e-9)
    assert [r["illegal"] for r in rows] == D and [r["baseline_legal"] for r in rows] == UL
    # equal log spacing (ln 2): MP-AUC = ((0.5 + 2/3)/2 + (2/3 + 12/13)/2 + (12/13 + 0)/2) / 3
    #                                  = (0.583333 + 0.794872 + 0.461538) / 3 = 1.839744 / 3 = 0.613248
    assert result["mp_auc"] == pytest.approx(0.613248, abs=1e-6)
    assert mp_auc(B, [0.5, 2 / 3, 12 / 13, 0.0]) == pytest.approx(0.613248, abs=1e-6)
    assert result["ref_budget"] == 40 and result["legal_ref_budget"] == 40
    assert result["illegal_delay"].value == pytest.approx(1.94531, abs=1e-5)
    assert result["legal_delay"].value == pytest.approx(1.41421, abs=1e-5)
    # selectivity = 1.94531 / 1.41421 = 1.37554 (= 2**0.46)
    assert result["selectivity"].bound == "=" and result["selectivity"].value == pytest.approx(1.37554, abs=1e-5)
    assert format_delay(result["selectivity"]) == "1.38"
    assert result["exact"] is True and result["primary"] == "dist" and result["higher_is_better"] is False


def test_mp_auc_weighs_log_budget_not_budget():
    # budgets 1, 10, 1000: intervals ln 10 and 2 ln 10 of a total 3 ln 10:
    # (1 * (0 + 1)/2 + 2 * (1 + 1)/2) / 3 = (0.5 + 2) / 3 = 0.833333
    assert mp_auc([1, 10, 1000], [0.0, 1.0, 1.0]) == pytest.approx(0.833333, abs=1e-6)
    assert mp_auc([200], [0.25]) == 0.25 and mp_auc([None], [0.25]) == 0.25  # one budget: that MP
    assert math.isnan(mp_auc(B, [0.5, float("nan"), 0.1, 0.0])) and math.isnan(mp_auc([], []))


# --- bounds ---------------------------------------------------------------------------------------------------

def test_never_reached_is_a_lower_bound():
    d = delay_factor(B, U, NEVER, higher_is_better=False)
    # 0.90, 0.70, 0.40, 0.20 are all > 0.104: delay > 80 / 40 = 2
    assert (d.value, d.bound) == (2.0, ">") and format_delay(d) == "> 2"
    # selectivity > 2 / 1.41421 = 1.41421
    s = selectivity(d, delay_factor(B, UL, DL, False))
    assert s.bound == ">" and s.value == pytest.approx(1.41421, abs=1e-5) and format_delay(s) == "> 1.41"


def test_reached_at_the_first_budget_is_an_upper_bound():
    d = delay_factor(B, U, [0.10, 0.10, 0.09, 0.08], higher_is_better=False)
    # 0.10 <= 0.104 already at 10: delay <= 10 / 40 = 0.25
    assert (d.value, d.bound) == (0.25, "<=") and format_delay(d) == "≤ 0.25"


def test_undefended_against_itself_is_a_delay_of_one():
    d = delay_factor(B, U, U, False)
    assert d.bound == "=" and d.value == pytest.approx(1.0)


def test_higher_is_better_direction():
    und, dfd = [0.20, 0.50, 0.80, 0.82], [0.10, 0.30, 0.60, 0.90]
    # best = max = 0.82, 5 % = 0.041, |0.80 - 0.82| = 0.02: ref 40, target 0.80
    assert reference_budget(B, und, higher_is_better=True) == 40
    d = delay_factor(B, und, dfd, higher_is_better=True)
    # reaches >= 0.80 at 80 (0.90) after 0.60: t = (0.60 - 0.80)/(0.60 - 0.90) = 2/3; delay = 2**(2/3) = 1.587401
    assert d.bound == "=" and d.target == 0.80 and d.value == pytest.approx(1.587401, abs=1e-6)
    # read as lower-is-better the same numbers give another answer: best = 0.20 at 10, D(10) = 0.10 <= 0.20
    assert delay_factor(B, und, dfd, higher_is_better=False).bound == "<="


def test_single_budget():
    d = delay_factor([200], [0.5], [0.7], False)
    assert (d.value, d.bound, d.ref_budget) == (1.0, ">", 200)  # 200 / 200, not reached within the one budget
    assert delay_factor([200], [0.5], [0.4], False).bound == "<="
    assert reference_budget([200], [0.5], False) == 200


def test_mismatched_budgets_use_the_shared_ones():
    undefended = dict(zip(B, U))
    defended = {10: 0.90, 40: 0.20, 80: 0.10, 160: 0.05}
    # shared 10, 40, 80: ref still 40 (target 0.104); reached at 80 after 0.20 at 40: t = 0.96, delay 2**0.96
    d = delay_factor(None, undefended, defended, False)
    assert d.bound == "=" and d.value == pytest.approx(1.94531, abs=1e-5)
    # none shared: undefined
    none = delay_factor(None, {10: 0.5, 20: 0.4}, {40: 0.3, 80: 0.2}, False)
    assert math.isnan(none.value) and none.bound == "" and format_delay(none) == "n/a"
    with pytest.raises(Exception, match="one value per budget"):
        delay_factor(B, U, D[:3], False)


def test_missing_values_make_the_delay_undefined():
    d = delay_factor(B, U, [0.9, float("nan"), 0.2, 0.1], False)
    assert math.isnan(d.value) and format_delay(d) == "n/a"


@pytest.mark.parametrize("ill, leg, expected", [
    (("=", 4.0), ("=", 2.0), ("=", 2.0, "2")),
    (("=", 4.0), ("<=", 2.0), (">=", 2.0, "≥ 2")),   # L <= 2 so I/L >= 2
    (("=", 4.0), (">", 2.0), ("<", 2.0, "< 2")),     # L > 2 so I/L < 2
    (("<=", 1.0), ("=", 2.0), ("<=", 0.5, "≤ 0.5")),
    (("<=", 1.0), (">", 2.0), ("<", 0.5, "< 0.5")),
    ((">", 8.0), ("=", 2.0), (">", 4.0, "> 4")),
    ((">", 8.0), ("<=", 2.0), (">", 4.0, "> 4")),
    (("<=", 1.0), ("<=", 2.0), ("", None, "n/a")),
    ((">", 8.0), (">", 2.0), ("", None, "n/a")),
    (("", float("nan")), ("=", 2.0), ("", None, "n/a")),
])
def test_selectivity_bounds(ill, leg, expected):
    s = selectivity(Delay(ill[1], ill[0]), Delay(leg[1], leg[0]))
    bound, value, text = expected
    assert s.bound == bound and format_delay(s) == text
    assert math.isnan(s.value) if value is None else s.value == value


def test_format_delay():
    assert format_delay(Bounded(3.2, "=")) == "3.2"
    assert format_delay(Bounded(0.5, "<=")) == "≤ 0.5"
    assert format_delay(Bounded(16.0, ">")) == "> 16"
    assert format_delay(Bounded(float("nan"), "")) == "n/a"
    assert format_delay(Bounded(12.3456, "=")) == "12.3"


# --- records --------------------------------------------------------------------------------------------------

def _ci_records():
    return [json.loads(line) for line in CI.read_text().splitlines() if line.strip()]


def test_schema_1_record_reads_as_a_one_budget_curve():
    rec = _ci_records()[0]
    assert rec["schema_version"] == 1 and "curve" not in rec["metrics"]
    curve = record_curve(rec)
    assert len(curve) == 1
    assert curve[0]["budget"] == rec["cell"]["attack"]["params"]["steps"] == 200
    assert curve[0]["illegal"] == rec["metrics"]["illegal"] and curve[0]["legal"] == rec["metrics"]["legal"]
    no_steps = json.loads(json.dumps(rec))
    del no_steps["cell"]["attack"]["params"]["steps"]
    assert record_curve(no_steps)[0]["budget"] is None


def test_schema_2_record_without_budgets_reads_like_schema_1():
    rec = curve_record("guard", 0, [300], [0.4], [0.5])
    del rec["cell"]["budgets"]
    rec["metrics"]["curve"][0]["budget"] = None  # one evaluation after the whole attack (300 steps)
    assert record_curve(rec) == [{"budget": 300, "illegal": {"dist": 0.4}, "legal": {"dist": 0.5}}]
    rec["metrics"]["curve"].append(dict(rec["metrics"]["curve"][0]))
    with pytest.raises(DataError, match="positive numeric 'budget'"):
        record_curve(rec)


def test_schema_1_leaderboard_keeps_its_numbers_and_has_no_delays():
    records = _ci_records()
    df = build_leaderboard(records)
    assert set(df["budgets"]) == {"200"}
    assert df["mitigation_power_b200_mean"].tolist() == pytest.approx(df["mitigation_power_mean"].tolist())
    assert df["legal_impact_b200_mean"].tolist() == pytest.approx(df["legal_impact_mean"].tolist())
    assert df["mp_auc_mean"].tolist() == pytest.approx(df["mitigation_power_mean"].tolist())  # one budget
    assert df["illegal_delay"].isna().all() and set(df["illegal_delay_bound"]) == {""}
    assert df["ref_budget"].isna().all() and set(df["selectivity_bound"]) == {""}
    assert "Anytime" not in to_markdown(df)  # no curve table for one-budget files
    base = next(r for r in records if r["cell"]["defense"]["name"] == "none")
    other = next(r for r in records
                 if r["cell"]["defense"]["name"] != "none" and r["cell"]["seed"] == base["cell"]["seed"])
    single = compare_to_baseline(other, base)
    assert [r["budget"] for r in single["rows"]] == [200] and single["exact"] is None
    assert single["mp_auc"] == single["rows"][0]["mitigation_power"]
    assert single["illegal_delay"].bound == "" and format_delay(single["selectivity"]) == "n/a"


def test_malformed_curves_are_data_errors():
    rec = curve_record("guard", 0, [10, 20], [0.5, 0.4], [0.5, 0.4])
    rec["metrics"]["curve"][1]["budget"] = 10
    with pytest.raises(DataError, match="not strictly increasing"):
        record_curve(rec)
    rec = curve_record("guard", 0, [10, 20], [0.5, 0.4], [0.5, 0.4])
    rec["cell"]["budgets"] = [10, 30]
    with pytest.raises(DataError, match="differ from the curve's budgets"):
        record_curve(rec)
    rec["metrics"]["curve"] = []
    with pytest.raises(DataError, match="non-empty list"):
        record_curve(rec)


def test_compare_to_baseline_rejects_other_metrics_and_disjoint_budgets():
    guard = curve_record("guard", 0, [10, 20], [0.5, 0.4], [0.5, 0.4])
    with pytest.raises(DataError, match="share no budget"):
        compare_to_baseline(guard, curve_record("none", 0, [40, 80], [0.5, 0.4], [0.5, 0.4]))
    with pytest.raises(DataError, match="scores 'dist' but its baseline"):
        compare_to_baseline(guard, curve_record("none", 0, [10, 20], [0.5, 0.4], [0.5, 0.4], metric="sim",
                                                hib={"sim": True}))


# --- leaderboard ----------------------------------------------------------------------------------------------

BUDGETS = [10, 20, 40]


def _board_records():
    """2 seeds × {none, guard} at budgets 10, 20, 40 (lower-is-better distance)."""
    return [curve_record("none", 0, BUDGETS, [0.30, 0.30, 0.30], [0.50, 0.40, 0.40]),
            curve_record("none", 1, BUDGETS, [0.20, 0.20, 0.20], [0.50, 0.40, 0.40]),
            curve_record("guard", 0, BUDGETS, [0.90, 0.60, 0.45], [0.60, 0.50, 0.38]),
            curve_record("guard", 1, BUDGETS, [0.60, 0.30, 0.30], [0.60, 0.50, 0.38])]


def _row(df, defense):
    match = df[df["defense"] == defense]
    assert len(match) == 1, df
    return match.iloc[0]


def test_leaderboard_per_budget_columns_hand_computed():
    df = build_leaderboard(_board_records())
    guard, base = _row(df, "guard"), _row(df, "none")
    assert guard["budgets"] == "10,20,40"
    # MP per seed, paired at the same budget:
    #   seed 0: (0.90-0.30)/0.30 = 2, (0.60-0.30)/0.30 = 1,   (0.45-0.30)/0.30 = 0.5
    #   seed 1: (0.60-0.20)/0.20 = 2, (0.30-0.20)/0.20 = 0.5, (0.30-0.20)/0.20 = 0.5
    assert guard["mitigation_power_b10_mean"] == pytest.approx(2.0)
    assert guard["mitigation_power_b10_std"] == pytest.approx(0.0, abs=1e-12)
    # b20: mean (1 + 0.5)/2 = 0.75 (against the seed-mean baseline 0.25 it would be (1.4 + 0.2)/2 = 0.8), std 0.5/√2
    assert guard["mitigation_power_b20_mean"] == pytest.approx(0.75)
    assert guard["mitigation_power_b20_std"] == pytest.approx(0.353553, abs=1e-6)
    assert guard["mitigation_power_b40_mean"] == pytest.approx(0.5)
    assert guard["mitigation_power_mean"] == pytest.approx(0.5)  # final budget = b40
    # LI per seed (both seeds alike): (0.60-0.50)/0.50 = 0.2, (0.50-0.40)/0.40 = 0.25, (0.38-0.40)/0.40 = -0.05
    assert [guard[f"legal_impact_b{b}_mean"] for b in BUDGETS] == pytest.approx([0.2, 0.25, -0.05])
    assert guard["legal_impact_mean"] == pytest.approx(-0.05)
    # MP-AUC: seed 0: ((2 + 1)/2 + (1 + 0.5)/2) / 2 = 1.125; seed 1: ((2 + 0.5)/2 + (0.5 + 0.5)/2) / 2 = 0.875
    assert guard["mp_auc_mean"] == pytest.approx(1.0) and guard["mp_auc_std"] == pytest.approx(0.176777, abs=1e-6)
    # seed-mean curves: baseline illegal 0.25, 0.25, 0.25 → ref 10, target 0.25; guard 0.75, 0.45, 0.375 never
    # reaches it → illegal delay > 40/10 = 4
    assert guard["ref_budget"] == 10 and (guard["illegal_delay"], guard["illegal_delay_bound"]) == (4.0, ">")
    # legal: baseline 0.50, 0.40, 0.40 → ref 20, target 0.40; guard 0.60, 0.50, 0.38 reaches it at 40 after 0.50:
    # t = (0.50-0.40)/(0.50-0.38) = 5/6, b* = 20 * 2**(5/6) = 35.636, delay = 1.781797
    assert guard["legal_ref_budget"] == 20 and guard["legal_delay_bound"] == "="
    assert guard["legal_delay"] == pytest.approx(1.781797, abs=1e-6)
    # selectivity > 4 / 1.781797 = 2.244924
    assert guard["selectivity_bound"] == ">" and guard["selectivity"] == pytest.approx(2.244924, abs=1e-6)
    # the baseline row: zero scores, no delays
    assert base["mp_auc_mean"] == 0 and base["mitigation_power_b20_mean"] == 0
    assert math.isnan(base["illegal_delay"]) and base["illegal_delay_bound"] == "" and math.isnan(base["ref_budget"])
    assert guard["baseline_matched"] == "per-seed"


def test_markdown_curve_table_and_legend():
    md = to_markdown(build_leaderboard(_board_records()))
    assert "| defense | attack | threat model | seeds | MP @10 | MP @20 | MP @40 | MP-AUC | illegal delay | " \
           "legal delay | selectivity | legal impact |" in md
    assert "| guard | fullft | compliant | 2 | 2 | 0.75 | 0.5 | 1 ± 0.177 | > 4 | 1.78 | > 2.24 | -0.05 ± 0 |" in md
    assert "| none | fullft | compliant | 2 | 0 | 0 | 0 | 0 ± 0 | n/a | n/a | n/a | 0 ± 0 |" in md
    assert "(../docs/definitions.md#delay-factor)" in md and "- **MP-AUC**:" in md
    assert md.index("Anytime attack curves") < md.index("| defense | attack | threat model | seeds | mitigation power")


def test_rows_with_different_budgets_are_an_error():
    records = _board_records() + [curve_record("guard", 2, [10, 20, 80], [0.9, 0.6, 0.4], [0.6, 0.5, 0.4])]
    with pytest.raises(DataError, match=r"'toy \| guard vs fullft \| compliant' has records with different budgets"):
        build_leaderboard(records)


def test_rows_without_a_baseline_have_no_delays():
    guard = _row(build_leaderboard(_board_records()[2:]), "guard")
    assert guard["baseline_matched"] == "missing" and math.isnan(guard["mitigation_power_b20_mean"])
    assert math.isnan(guard["mp_auc_mean"]) and math.isnan(guard["illegal_delay"]) and guard["selectivity_bound"] == ""
    assert guard["budgets"] == "10,20,40"


def test_seed_without_a_baseline_budget_uses_the_seed_mean_at_that_budget():
    records = _board_records()[:2] + [curve_record("guard", 5, BUDGETS, [0.90, 0.60, 0.45], [0.6, 0.5, 0.38])]
    guard = _row(build_leaderboard(records), "guard")
    # seed 5 has no baseline: baseline seed mean at 20 is (0.30 + 0.20)/2 = 0.25 → (0.60 - 0.25)/0.25 = 1.4
    assert guard["mitigation_power_b20_mean"] == pytest.approx(1.4) and guard["baseline_matched"] == "seed-mean"


def test_regression_check_covers_mp_auc(tmp_path):
    df = build_leaderboard(_board_records())
    saved = tmp_path / "base.csv"
    to_csv(df, saved)
    assert check_regressions(df, saved) == []
    back = pd.read_csv(saved)
    back.loc[back["defense"] == "guard", "mp_auc_mean"] = 1.2  # now 1.0: a drop of 0.2 > 0.05
    back.to_csv(saved, index=False)
    problems = check_regressions(df, saved)
    assert problems == ["toy | guard vs fullft | compliant: MP-AUC dropped from 1.2 to 1 "
                        "(more than the tolerance 0.05)"]
    back.drop(columns="mp_auc_mean").to_csv(saved, index=False)  # an older CSV without the column
    assert check_regressions(df, saved) == []


# --- plots and CLI --------------------------------------------------------------------------------------------

def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_plot_curves(tmp_path):
    assert _is_png(plot_curves(_board_records(), tmp_path / "c.png"))
    with pytest.raises(Exception, match="no record in the results has an anytime curve"):
        plot_curves(_ci_records(), tmp_path / "x.png")


def test_cli_plot_writes_curves_not_budget_png(tmp_path, monkeypatch):
    # ResultStore reads schema 1 until the runner writes schema 2; hand the records over directly.
    monkeypatch.setattr(leaderboard_cli, "load_records", lambda results: _board_records())
    leaderboard_cli.attach(cli)
    out = CliRunner().invoke(cli, ["leaderboard", str(tmp_path / "r.jsonl"), "--output-dir", str(tmp_path / "lb"),
                                   "--name", "toy", "--plot"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert _is_png(tmp_path / "lb" / "toy-curves.png") and _is_png(tmp_path / "lb" / "toy.png")
    assert not (tmp_path / "lb" / "toy-budget.png").exists()
    assert "| > 4 |" in (tmp_path / "lb" / "toy.md").read_text()


def test_reference_budget_uses_the_way_from_the_before_attack_value():
    from advbench.curves import reference_budget

    budgets, undefended = [10, 20, 40, 80], [0.60, 0.30, 0.14, 0.10]
    # hand-computed (docs/definitions.md): 5 % of the way from 1.0 to 0.10 is 0.045 and |0.14 - 0.10| = 0.04
    # meets it; 5 % of the best value is 0.005, which only 0.10 itself meets
    assert reference_budget(budgets, undefended, False, start=1.0) == 40
    assert reference_budget(budgets, undefended, False) == 80
    # higher is better: from 0.0 to 0.82, 5 % of the way is 0.041; 0.80 is within it, 0.50 is not
    assert reference_budget(budgets, [0.2, 0.5, 0.8, 0.82], True, start=0.0) == 40
