"""Leaderboard math (hand-computed), aggregation over seeds, Markdown/CSV, regression check, plots and the CLI."""

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from advbench.cli import leaderboard as leaderboard_cli
from advbench.cli.main import cli
from advbench.errors import DataError
from advbench.leaderboard import build_leaderboard, relative_degradation, to_csv, to_markdown, write_leaderboard
from advbench.regression import check_regressions
from advbench.plots import plot_budget_curves, plot_leaderboard

from tests.test_results import make_record

LOWER = {"dist": False}  # a distance to the illegal references: lower = better forgery
HIGHER = {"sim": True}   # a similarity: higher = better forgery


def rec(defense, seed, illegal, legal, metric="dist", hib=None, **kw):
    """A record whose only illegal class 'a' and legal class 'b' have the given primary-metric values."""
    return make_record(defense=defense, seed=seed, illegal={"a": {metric: illegal}}, legal={"b": {metric: legal}},
                       higher_is_better=hib or LOWER, primary=metric, **kw)


def row(df, defense, attack="fullft"):
    match = df[(df["defense"] == defense) & (df["attack"] == attack)]
    assert len(match) == 1, df
    return match.iloc[0]


def test_relative_degradation_directions():
    # lower is better: the defense pushed the distance up from 0.4 to 0.6 → +0.5 (the forgery got worse)
    assert relative_degradation(0.4, 0.6, higher_is_better=False) == pytest.approx(0.5)
    # higher is better: similarity fell from 0.8 to 0.6 → +0.25
    assert relative_degradation(0.8, 0.6, higher_is_better=True) == pytest.approx(0.25)
    # a defense that *helps* the attacker gets a negative score in both directions
    assert relative_degradation(0.4, 0.3, higher_is_better=False) == pytest.approx(-0.25)
    assert relative_degradation(0.8, 1.0, higher_is_better=True) == pytest.approx(-0.25)
    assert math.isnan(relative_degradation(0.0, 0.5, True))


def test_lower_is_better_metric_hand_computed():
    df = build_leaderboard([rec("none", 0, illegal=0.4, legal=0.5), rec("guard", 0, illegal=0.6, legal=0.55)])
    guard, base = row(df, "guard"), row(df, "none")
    assert guard["mitigation_power_mean"] == pytest.approx(-1 * (0.4 - 0.6) / 0.4)  # 0.5
    assert guard["legal_impact_mean"] == pytest.approx(-1 * (0.5 - 0.55) / 0.5)  # 0.1
    assert base["mitigation_power_mean"] == 0 and base["legal_impact_mean"] == 0
    assert guard["illegal_dist_mean"] == 0.6 and guard["legal_dist_mean"] == 0.55
    assert guard["n_seeds"] == 1 and guard["mitigation_power_std"] == 0 and guard["baseline_matched"] == "per-seed"
    assert list(df["defense"]) == ["guard", "none"]  # mitigation power descending
    assert df.attrs["higher_is_better"] == {"dist": False}


def test_higher_is_better_metric_hand_computed():
    df = build_leaderboard([rec("none", 0, 0.8, 0.9, "sim", HIGHER), rec("guard", 0, 0.6, 0.9, "sim", HIGHER),
                            rec("helper", 0, 0.9, 0.72, "sim", HIGHER)])
    assert row(df, "guard")["mitigation_power_mean"] == pytest.approx((0.8 - 0.6) / 0.8)  # 0.25
    assert row(df, "guard")["legal_impact_mean"] == pytest.approx(0.0)
    assert row(df, "helper")["mitigation_power_mean"] == pytest.approx((0.8 - 0.9) / 0.8)  # -0.125
    assert row(df, "helper")["legal_impact_mean"] == pytest.approx((0.9 - 0.72) / 0.9)  # 0.2
    assert list(df["defense"]) == ["guard", "none", "helper"]


def test_illegal_value_is_the_mean_over_illegal_classes():
    base = make_record("none", illegal={"a": {"dist": 0.2}, "c": {"dist": 0.6}}, legal={"b": {"dist": 1.0}})
    guard = make_record("guard", illegal={"a": {"dist": 0.5}, "c": {"dist": 0.7}}, legal={"b": {"dist": 1.0}})
    df = build_leaderboard([base, guard])
    # illegal means 0.4 (baseline) and 0.6 (guard) → -(0.4 - 0.6) / 0.4
    assert row(df, "guard")["mitigation_power_mean"] == pytest.approx(0.5)


def test_seeds_are_matched_then_aggregated_with_sample_std():
    records = [rec("none", 0, 0.4, 0.5), rec("none", 1, 0.5, 0.5),
               rec("guard", 0, 0.6, 0.5), rec("guard", 1, 0.6, 0.6)]
    df = build_leaderboard(records)
    guard = row(df, "guard")
    # seed 0: -(0.4 - 0.6)/0.4 = 0.5; seed 1: -(0.5 - 0.6)/0.5 = 0.2
    assert guard["mitigation_power_mean"] == pytest.approx(0.35)
    assert guard["mitigation_power_std"] == pytest.approx(0.3 / math.sqrt(2))  # ddof=1
    # legal: seed 0: 0; seed 1: -(0.5 - 0.6)/0.5 = 0.2
    assert guard["legal_impact_mean"] == pytest.approx(0.1)
    assert guard["legal_impact_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert guard["n_seeds"] == 2
    assert row(df, "none")["illegal_dist_mean"] == pytest.approx(0.45)
    assert row(df, "none")["illegal_dist_std"] == pytest.approx(0.1 / math.sqrt(2))


def test_unmatched_seed_uses_the_baseline_seed_mean_and_says_so():
    base = [rec("none", 0, 0.4, 0.5), rec("none", 1, 0.5, 0.5)]
    only_new_seed = build_leaderboard(base + [rec("guard", 7, 0.6, 0.5)])
    guard = row(only_new_seed, "guard")
    assert guard["mitigation_power_mean"] == pytest.approx(-(0.45 - 0.6) / 0.45)
    assert guard["baseline_matched"] == "seed-mean"
    mixed = build_leaderboard(base + [rec("guard", 0, 0.6, 0.5), rec("guard", 7, 0.6, 0.5)])
    assert row(mixed, "guard")["baseline_matched"] == "partial"
    assert row(mixed, "guard")["mitigation_power_mean"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_baseline_is_per_attack_and_threat_model_and_may_be_missing():
    records = [rec("none", 0, 0.4, 0.5), rec("guard", 0, 0.6, 0.5),
               rec("guard", 0, 0.6, 0.5, attack="lora"),  # no 'none' under lora
               rec("none", 0, 0.3, 0.5, threat="unconstrained"), rec("guard", 0, 0.6, 0.5, threat="unconstrained")]
    df = build_leaderboard(records)
    lora = row(df, "guard", "lora")
    assert math.isnan(lora["mitigation_power_mean"]) and lora["baseline_matched"] == "missing"
    unc = df[(df["defense"] == "guard") & (df["threat_model"] == "unconstrained")].iloc[0]
    assert unc["mitigation_power_mean"] == pytest.approx(-(0.3 - 0.6) / 0.3)
    assert list(zip(df["attack"], df["threat_model"], df["defense"])) == [
        ("fullft", "compliant", "guard"), ("fullft", "compliant", "none"),
        ("fullft", "unconstrained", "guard"), ("fullft", "unconstrained", "none"), ("lora", "compliant", "guard")]



def test_numbers_in_attack_labels_sort_as_numbers():
    records = [rec(d, 0, 0.4, 0.5, attack_label=f"fullft[steps={n}]", attack_params={"steps": n})
               for n in (1600, 200, 800, 50) for d in ("none", "guard")]
    df = build_leaderboard(records)
    assert list(dict.fromkeys(df["attack"])) == [f"fullft[steps={n}]" for n in (50, 200, 800, 1600)]

def test_metric_columns_and_domains():
    two = {"dist": False, "sim": True}
    records = [make_record("none", domain=d, illegal={"a": {"dist": 0.4, "sim": 0.8}},
                           legal={"b": {"dist": 0.5, "sim": 0.9}}, higher_is_better=two) for d in ("zeta", "alpha")]
    df = build_leaderboard(records)
    assert list(df["domain"]) == ["alpha", "zeta"]
    for column in ("illegal_dist_mean", "illegal_dist_std", "legal_dist_mean", "legal_dist_std",
                   "illegal_sim_mean", "legal_sim_std", "mitigation_power_mean", "legal_impact_std", "n_seeds"):
        assert column in df.columns
    assert df.columns.get_loc("illegal_dist_mean") < df.columns.get_loc("illegal_sim_mean")  # primary first


def test_duplicates_and_conflicts():
    a = rec("none", 0, 0.4, 0.5)
    assert len(build_leaderboard([a, a])) == 1  # the same cell twice counts once
    other_model = rec("none", 0, 0.4, 0.5)
    other_model["cell"]["model"] = "/models/other"
    other_model["cell_id"] = "0123456789abcdef"
    with pytest.raises(DataError, match="differ in configuration"):
        build_leaderboard([a, other_model])
    flipped = rec("guard", 0, 0.4, 0.5, hib={"dist": True})
    with pytest.raises(DataError, match="both as higher-is-better and lower-is-better"):
        build_leaderboard([a, flipped])


def test_markdown_and_csv(tmp_path):
    records = [rec("none", 0, 0.4, 0.5), rec("none", 1, 0.5, 0.5), rec("guard", 0, 0.6, 0.5),
               rec("guard", 1, 0.6, 0.6), rec("none", 0, 1.0, 1.0, domain="art")]
    df = build_leaderboard(records)
    md = to_markdown(df)
    assert md.index("## art") < md.index("## toy")
    assert "| guard | fullft | compliant | 2 | 0.35 ± 0.212 | 0.1 ± 0.141 | 0.6 ± 0 | 0.55 ± 0.0707 | per-seed |" in md
    assert "| none | fullft | compliant | 2 | 0 ± 0 |" in md
    assert "illegal dist ↓" in md and "`dist` ↓" in md and "do not edit by hand" in md
    csv_path, md_path = write_leaderboard(df, tmp_path / "out", "board")
    assert md_path.read_text() == md
    back = pd.read_csv(csv_path)
    assert back["mitigation_power_mean"].tolist() == pytest.approx(df["mitigation_power_mean"].tolist())
    assert to_csv(df) == csv_path.read_text()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def _grid():
    return [rec("none", s, 0.4 + 0.1 * s, 0.5) for s in (0, 1)] + \
           [rec("guard", s, 0.6, 0.5 + 0.1 * s) for s in (0, 1)]


def test_regression_check_passes_and_fails(tmp_path):
    df = build_leaderboard(_grid())
    baseline = tmp_path / "base.csv"
    to_csv(df, baseline)
    assert check_regressions(df, baseline) == []
    saved = pd.read_csv(baseline)
    guard = saved["defense"] == "guard"
    saved.loc[guard, "mitigation_power_mean"] += 0.03  # within tolerance
    saved.to_csv(baseline, index=False)
    assert check_regressions(df, baseline, tolerance=0.05) == []
    saved.loc[guard, "mitigation_power_mean"] += 0.1
    saved.loc[guard, "legal_impact_mean"] -= 0.2
    extra = saved.iloc[[0]].assign(defense="imma")
    pd.concat([saved, extra]).to_csv(baseline, index=False)
    problems = check_regressions(df, baseline, tolerance=0.05)
    assert len(problems) == 3, problems
    assert any("toy | guard vs fullft | compliant: mitigation power dropped from 0.48 to 0.35" in p for p in problems)
    assert any("guard vs fullft | compliant: legal impact rose from -0.1 to 0.1" in p for p in problems)
    assert any("toy | imma vs fullft | compliant: in the baseline but missing" in p for p in problems)


def test_any_change_flags_moves_either_way_and_the_primary_metric(tmp_path):
    df = build_leaderboard(_grid())
    baseline = tmp_path / "base.csv"
    saved = df.copy()
    guard = saved["defense"] == "guard"
    saved.loc[guard, "mitigation_power_mean"] -= 0.1  # the defense got *better* now: no regression by default
    none = saved["defense"] == "none"
    # every number of the undefended row moved by the same factor: its MP and LI stay 0, its metric does not
    saved.loc[none, "illegal_dist_mean"] *= 1.1
    to_csv(saved, baseline)
    assert check_regressions(df, baseline, tolerance=0.05) == []
    problems = check_regressions(df, baseline, tolerance=0.05, any_change=True)
    assert len(problems) == 2, problems
    assert any("guard vs fullft | compliant: mitigation power moved from" in p for p in problems)
    assert any("none vs fullft | compliant: illegal dist moved from" in p and "of its saved value" in p
               for p in problems)
    assert check_regressions(df, baseline, tolerance=0.2, any_change=True) == []  # 10 % and 0.1 are within 0.2


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("", "is not a readable CSV"),
    ("domain,defense\ntoy,none\n", "lacks columns attack, threat_model"),
    ("domain,defense,attack,threat_model,mitigation_power_mean,legal_impact_mean\ntoy,none,ft,compliant,high,0\n",
     "holds non-numbers"),
    ("domain,defense,attack,threat_model,mitigation_power_mean,legal_impact_mean\n"
     "toy,none,ft,compliant,0,0\ntoy,none,ft,compliant,0,0\n", "twice"),
])
def test_bad_baseline_csv_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "base.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        check_regressions(build_leaderboard(_grid()), path)


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_plots_write_pngs(tmp_path):
    records = []
    for steps in (10, 20, 40):
        label = f"fullft[steps={steps}]"
        for seed in (0, 1):
            records.append(rec("none", seed, 0.4, 0.5, attack_label=label, attack_params={"steps": steps}))
            records.append(rec("guard", seed, 0.4 + 4 / steps, 0.5, attack_label=label, attack_params={"steps": steps}))
    assert _is_png(plot_budget_curves(records, tmp_path / "budget.png"))
    assert _is_png(plot_leaderboard(build_leaderboard(records), tmp_path / "plots" / "board.png"))
    with pytest.raises(Exception, match="no attack in the results has a numeric parameter 'rank'"):
        plot_budget_curves(records, tmp_path / "x.png", budget_param="rank")


@pytest.fixture
def invoke():
    leaderboard_cli.attach(cli)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "grid.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _grid()))
    return path


def test_cli_prints_and_writes(invoke, results_file, tmp_path):
    out = invoke("leaderboard", results_file)
    assert out.exit_code == 0, out.output
    assert "## toy" in out.stdout and "| guard | fullft | compliant | 2 |" in out.stdout
    csv = invoke("leaderboard", results_file, "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("domain,defense,attack,threat_model,n_seeds")
    written = invoke("leaderboard", results_file, "--output-dir", tmp_path / "lb", "--name", "toy", "--plot")
    assert written.exit_code == 0, written.output
    assert (tmp_path / "lb" / "toy.csv").exists() and (tmp_path / "lb" / "toy.md").exists()
    assert _is_png(tmp_path / "lb" / "toy.png")
    assert "budget plot skipped" in written.output  # a single steps value


def test_cli_check(invoke, results_file, tmp_path):
    invoke("leaderboard", results_file, "--output-dir", tmp_path, "--name", "base")
    ok = invoke("leaderboard", results_file, "--check", tmp_path / "base.csv")
    assert ok.exit_code == 0 and "no regressions" in ok.output
    saved = pd.read_csv(tmp_path / "base.csv")
    saved["mitigation_power_mean"] += 1.0
    saved.to_csv(tmp_path / "base.csv", index=False)
    bad = invoke("leaderboard", results_file, "--check", tmp_path / "base.csv", "--tolerance", "0.1")
    assert bad.exit_code == 1
    assert "REGRESSION toy | guard vs fullft | compliant: mitigation power dropped" in bad.output
    assert "2 regression(s)" in bad.output
    assert leaderboard_cli.check_command(_grid(), tmp_path / "base.csv", 0.1, echo=lambda m: None) is False


@pytest.mark.parametrize("content, args, message", [
    (None, (), "not found"),
    ("not json\n", (), "line 1 is not a JSON object"),
    ("", (), "has no records"),
    ("\n\n", (), "has no records"),
    ("ok", ("--plot",), "--plot writes image files and needs --output-dir"),
    ("ok", ("--check", "/nonexistent/base.csv"), "baseline leaderboard /nonexistent/base.csv not found"),
])
def test_cli_bad_input_exit_2(invoke, results_file, tmp_path, content, args, message):
    path = results_file if content == "ok" else tmp_path / "bad.jsonl"
    if content not in (None, "ok"):
        path.write_text(content)
    out = invoke("leaderboard", path, *args)
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output
    assert len(out.stderr.strip().splitlines()) == 1
