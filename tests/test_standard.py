"""The standard leaderboard (advbench/standard.py): merging results files, refusing mixes, rank, Pareto, ratings,
Markdown and the `advbench leaderboard merge` CLI next to the one-file form."""

import copy
import io
import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from advbench.cli import leaderboard as leaderboard_cli
from advbench.cli.leaderboard import load_records
from advbench.cli.main import cli
from advbench.errors import DataError
from advbench.leaderboard import KEYS, _key, build_leaderboard
from advbench.standard import (build_standard, competition_rank, load_sources, merge_records, pareto_front,
                               read_ratings, score_columns, standard_markdown, write_standard)

from advbench.results import cell_id

from tests.test_results import make_record

RESULTS = Path(__file__).resolve().parent.parent / "results"
NAN = float("nan")


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rec(defense, illegal, legal, attack="fullft", seed=0):
    """A record of domain 'toy' whose illegal class 'a' and legal class 'b' have these distances (lower = better
    forgery): against the baseline (0.4 illegal, 0.5 legal) MP = (illegal − 0.4)/0.4, LI = (legal − 0.5)/0.5."""
    return make_record(defense=defense, attack=attack, seed=seed, illegal={"a": {"dist": illegal}},
                       legal={"b": {"dist": legal}})


def _row(df, defense, attack="fullft"):
    match = df[(df["defense"] == defense) & (df["attack"] == attack)]
    assert len(match) == 1, df
    return match.iloc[0]


@pytest.fixture
def split(tmp_path):
    """results/freezeasguard.jsonl split by cell into two files; the baselines are in both (identical copies)."""
    records = load_records(RESULTS / "freezeasguard.jsonl")
    base = [r for r in records if r["cell"]["defense"]["name"] == "none"]
    rest = [r for r in records if r["cell"]["defense"]["name"] != "none"]
    a = _write(tmp_path / "a.jsonl", base + rest[0::2])
    b = _write(tmp_path / "b.jsonl", base + rest[1::2])
    return records, a, b


def test_merge_of_split_file_equals_leaderboard_of_the_whole(split):
    records, a, b = split
    merged = merge_records(load_sources([a, b]))
    assert len(merged) == len(records)  # the baselines in both files count once
    df = build_standard(merged)
    whole = build_leaderboard(records)
    left = df[whole.columns].sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(left, whole.sort_values(KEYS).reset_index(drop=True))
    assert set(df.loc[df["defense"] == "none", "sources"]) == {f"{a};{b}"}
    holders = {}
    for path in (a, b):
        for r in load_records(path):
            holders.setdefault(_key(r), set()).add(str(path))
    assert {tuple(r[KEYS]): set(r["sources"].split(";")) for _, r in df.iterrows()} == holders
    defended = df[df["defense"] != "none"]
    # these rows have anytime curves at the same budgets: ranked by MP-AUC, best first, 1 for the best of a group
    assert set(defended["rank_by"]) == {"mp_auc_mean"}
    for _, group in defended.groupby(["domain", "attack", "threat_model"]):
        best = group["mp_auc_mean"].max()
        assert (group.loc[group["rank"] == 1, "mp_auc_mean"] == best).all()
    assert df["advbench_version"].eq("0.1.0").all() and df["model_fingerprint"].str.len().eq(12).all()


@pytest.mark.parametrize("field, value", [("domain_version", "99"), ("model_fingerprint", "f" * 64)])
def test_mixed_worlds_or_models_are_refused_naming_both_files(split, tmp_path, field, value):
    records, _, _ = split
    for r in records:
        r["provenance"].setdefault("domain_version", "4")  # older records lack it: it is then not compared
    first = _write(tmp_path / "first.jsonl", records)
    # new cells (seed 7) of the same rows, measured in another world or on another base model
    other = copy.deepcopy([r for r in records if r["cell"]["domain"]["name"] == "portraits"
                           and r["cell"]["defense"]["name"] != "none" and r["cell"]["seed"] == 0][:2])
    for r in other:
        r["cell"]["seed"] = 7
        r["cell_id"] = cell_id(r["cell"])
        r["provenance"][field] = value
    second = _write(tmp_path / "second.jsonl", other)
    with pytest.raises(DataError) as info:
        merge_records(load_sources([first, second]))
    message = str(info.value)
    assert str(first) in message and str(second) in message and "portraits" in message


def test_same_cell_id_identical_kept_once_different_refused(tmp_path):
    base, guard = rec("none", 0.4, 0.5), rec("guard", 0.6, 0.55)
    rerun = copy.deepcopy(guard)
    rerun["metrics"]["illegal"]["dist"] *= 1 + 1e-7  # float round-off of a rerun: the same measurement
    rerun["started_at"] = "2026-01-01T00:00:00+00:00"
    a, b = _write(tmp_path / "a.jsonl", [base, guard]), _write(tmp_path / "b.jsonl", [base, rerun])
    merged = merge_records(load_sources([a, b]))
    assert len(merged) == 2 and merged[1]["metrics"]["illegal"]["dist"] == 0.6  # the first file's copy
    changed = copy.deepcopy(guard)
    changed["metrics"]["illegal"]["dist"] = 0.7
    c = _write(tmp_path / "c.jsonl", [changed])
    with pytest.raises(DataError, match=f"cell {guard['cell_id']} .* is in {a} and {c} with different measurements"):
        merge_records(load_sources([a, c]))
    # a KID near 0 loses relative precision in a rerun (seen: 0.0036137 vs 0.0036132): within the absolute 1e-6
    kid = copy.deepcopy(guard)
    kid["metrics"]["illegal"]["dist"] = 0.6 + 5e-7
    assert len(merge_records(load_sources([a, _write(tmp_path / "kid.jsonl", [base, kid])]))) == 2
    near = copy.deepcopy(guard)
    near["metrics"]["illegal"]["dist"] = 0.6 + 1e-4  # 1.7e-4 relative and 1e-4 absolute: another measurement
    with pytest.raises(DataError, match="with different measurements"):
        merge_records(load_sources([a, _write(tmp_path / "near.jsonl", [near])]))


def test_a_copy_with_per_image_values_agrees_with_one_without_and_is_the_one_kept(tmp_path):
    """Records written before per-image values existed and a rerun with them are one measurement when the class
    values agree; the merged copy is the one with per-image values (intervals resample images there)."""
    base, old = rec("none", 0.4, 0.5), rec("guard", 0.6, 0.55)
    new = copy.deepcopy(old)
    new["metrics"]["classes"]["a"]["per_image"] = {"dist": [0.5, 0.7]}
    new["metrics"]["classes"]["b"]["per_image"] = {"dist": [0.55, 0.55]}
    a, b = _write(tmp_path / "a.jsonl", [base, old]), _write(tmp_path / "b.jsonl", [new])
    merged = {r["cell_id"]: r for r in merge_records(load_sources([a, b]))}
    kept = merged[old["cell_id"]]
    assert kept["metrics"]["classes"]["a"]["per_image"] == {"dist": [0.5, 0.7]}
    assert kept["source_files"] == [str(a), str(b)]
    # the other order keeps the same copy; other class values still conflict
    assert merge_records(load_sources([b, a]))[0]["metrics"]["classes"]["a"]["per_image"] == {"dist": [0.5, 0.7]}
    moved = copy.deepcopy(new)
    moved["metrics"]["illegal"]["dist"] = 0.65
    with pytest.raises(DataError, match="with different measurements"):
        merge_records(load_sources([a, _write(tmp_path / "c.jsonl", [moved])]))


def test_two_cells_in_one_row_and_seed_are_refused_naming_both_files(tmp_path):
    a = _write(tmp_path / "a.jsonl", [rec("none", 0.4, 0.5)])
    other = make_record(defense="none", attack_params={"steps": 99}, illegal={"a": {"dist": 0.4}})
    b = _write(tmp_path / "b.jsonl", [other])
    with pytest.raises(DataError, match=f"in {a} and cell .* in {b}"):
        merge_records(load_sources([a, b]))


def _hand_made():
    # MP = (illegal - 0.4)/0.4, LI = (legal - 0.5)/0.5 (the distance rises when the defense works)
    return [rec("none", 0.4, 0.5),
            rec("A", 0.6, 0.55),    # MP 0.5, LI 0.1: dominated by B (same MP, lower LI)
            rec("B", 0.6, 0.50),    # MP 0.5, LI 0
            rec("C", 0.8, 0.75),    # MP 1.0, LI 0.5: the best MP
            rec("D", 0.44, 0.45),   # MP 0.1, LI -0.1: the lowest LI
            rec("E", 0.4, 0.6),     # MP 0,   LI 0.2: dominated by B and D
            rec("none", 0.4, 0.5, attack="lora"), rec("F", 0.3, 0.5, attack="lora")]  # another group


def test_rank_is_competition_ranking_and_pareto_flags_on_a_hand_made_table():
    df = build_standard(_hand_made())
    fullft = df[df["attack"] == "fullft"]
    assert list(fullft["defense"]) == ["none", "C", "A", "B", "D", "E"]  # baseline first, then by rank
    assert {d: _row(df, d)["rank"] for d in "ABCDE"} == {"C": 1, "A": 2, "B": 2, "D": 4, "E": 5}
    assert {d: bool(_row(df, d)["pareto"]) for d in "ABCDE"} == {"A": False, "B": True, "C": True, "D": True,
                                                                 "E": False}
    assert pd.isna(_row(df, "none")["rank"]) and pd.isna(_row(df, "none")["pareto"])
    assert _row(df, "none")["rank_by"] == "" and _row(df, "A")["rank_by"] == "mitigation_power_mean"
    f = _row(df, "F", "lora")  # alone in its group: rank 1 and on its front, whatever its (negative) MP
    assert f["mitigation_power_mean"] == pytest.approx(-0.25) and f["rank"] == 1 and bool(f["pareto"])


def test_nan_scores_rank_last_and_unranked():
    records = [rec("none", 0.4, 0.5), rec("good", 0.6, 0.5), rec("lost", NAN, 0.5), rec("noli", 0.5, NAN)]
    df = build_standard(records)
    assert list(df["defense"]) == ["none", "good", "noli", "lost"]
    assert df["rank"].tolist()[1:3] == [1, 2] and pd.isna(_row(df, "lost")["rank"])
    assert bool(_row(df, "good")["pareto"]) and pd.isna(_row(df, "noli")["pareto"]) and pd.isna(_row(df, "lost")["pareto"])
    # float noise below 1e-12 does not break a tie
    assert competition_rank([0.5, 0.7, NAN, 0.7, 0.1, 0.7 + 1e-15]) == pytest.approx([4, 1, NAN, 1, 5, 1], nan_ok=True)
    assert pareto_front([1.0, 1.0, NAN, 0.5], [0.2, 0.2, 0.0, 0.3]) == [True, True, None, False]


def test_score_columns_curves_or_shared_final_budget():
    table = lambda *budgets: pd.DataFrame({"budgets": list(budgets)})  # noqa: E731
    assert score_columns(table("10,20,40", "10,20,40")) == ("mp_auc_mean", "legal_impact_mean")
    assert score_columns(table("10,20,40", "10,20")) == ("mitigation_power_b20_mean", "legal_impact_b20_mean")
    assert score_columns(table("10", "10")) == ("mitigation_power_mean", "legal_impact_mean")
    assert score_columns(table("10,20", "30,40")) == ("mitigation_power_mean", "legal_impact_mean")


def _ratings_csv(path, rows):
    columns = ["domain", "defense", "attack", "threat_model", "role", "concept_mean", "concept_std", "quality_mean",
               "quality_std", "raters", "ratings"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def test_ratings_join(tmp_path):
    path = _ratings_csv(tmp_path / "r.csv", [
        ("toy", "B", "fullft", "compliant", "illegal", 2.5, 0.5, 5.0, 1.0, 3, 12),
        ("toy", "B", "fullft", "compliant", "legal", 6.0, 0.0, 6.5, 0.5, 2, 8),
        ("toy", "ghost", "fullft", "compliant", "legal", 1.0, 0.0, 1.0, 0.0, 1, 1)])
    df = build_standard(_hand_made(), read_ratings(path))
    b, a = _row(df, "B"), _row(df, "A")
    assert (b["human_illegal_concept_mean"], b["human_illegal_quality_std"], b["human_legal_concept_mean"]) == (2.5, 1.0, 6.0)
    assert b["human_raters"] == 3 and pd.isna(a["human_raters"]) and math.isnan(a["human_legal_quality_mean"])
    assert df.attrs["unmatched_ratings"] == ["toy | ghost vs fullft | compliant"]
    assert "human concept (illegal)" in standard_markdown(df) and "| 2.5 ± 0.5 |" in standard_markdown(df)
    pd.DataFrame({"domain": ["toy"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="lacks the columns"):
        build_standard(_hand_made(), pd.read_csv(tmp_path / "bad.csv"))


def test_markdown_legend_and_one_table_per_domain(tmp_path):
    records = _hand_made() + [make_record(defense="none", domain="other", illegal={"a": {"kid": 0.1}},
                                          legal={"b": {"kid": 0.2}}, higher_is_better={"kid": False}, primary="kid")]
    df = build_standard(records)
    text = standard_markdown(df)
    assert text.count("\n## ") == 2 and "## toy" in text and "## other" in text
    for column in ("rank", "ranked by", "MP-AUC", "MP", "LI", "Pareto", "illegal / legal FID, KID", "baseline"):
        assert f"- **{column}**:" in text
    assert "(../docs/definitions.md#standard-leaderboard)" in text
    assert "| 2 | A | fullft | compliant | 1 | MP |" in text and "| ✓ |" in text and "| · |" in text
    csv_path, md_path = write_standard(df, tmp_path / "out")
    assert md_path.read_text() == text and md_path.name == "standard.md"
    back = pd.read_csv(csv_path)
    assert list(back.columns) == list(df.columns) and back["rank"].isna().sum() == 3  # the three baselines


@pytest.fixture
def invoke():
    leaderboard_cli.attach(cli)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_merge_and_the_one_file_form(invoke, tmp_path):
    records = _hand_made()
    a, b = _write(tmp_path / "a.jsonl", records[:4]), _write(tmp_path / "b.jsonl", records[:1] + records[4:])
    out = invoke("leaderboard", "merge", a, b, "--output-dir", tmp_path / "lb", "--name", "std")
    assert out.exit_code == 0, out.output
    assert "# Standard leaderboard" in out.stdout and (tmp_path / "lb" / "std.csv").exists()
    assert pd.read_csv(tmp_path / "lb" / "std.csv")["rank"].max() == 5
    csv = invoke("leaderboard", "merge", a, b, "--format", "csv")
    assert csv.stdout.startswith("domain,defense,attack,threat_model,rank,rank_by,pareto,")
    old = invoke("leaderboard", "--format", "csv", a)  # options before RESULTS, as before
    assert old.exit_code == 0 and old.stdout.startswith("domain,defense,attack,threat_model,n_seeds")
    assert invoke("leaderboard", a, "--output-dir", tmp_path / "one").exit_code == 0
    assert (tmp_path / "one" / "a.md").exists()
    helped = invoke("leaderboard", "--help")
    assert "Usage: cli leaderboard [OPTIONS] RESULTS" in helped.stdout and "leaderboard merge" in helped.stdout
    changed = copy.deepcopy(records[1])
    changed["metrics"]["illegal"]["dist"] = 0.9
    bad = invoke("leaderboard", "merge", a, _write(tmp_path / "c.jsonl", [changed]))
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert str(a) in bad.stderr and str(tmp_path / "c.jsonl") in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    ratings = _ratings_csv(tmp_path / "r.csv", [("toy", "C", "fullft", "compliant", "legal", 4.0, 1.0, 5.0, 0.0, 2, 6),
                                                ("toy", "Z", "fullft", "compliant", "legal", 4.0, 1.0, 5.0, 0.0, 2, 6)])
    rated = invoke("leaderboard", "merge", a, b, "--ratings", ratings, "--format", "csv")
    assert rated.exit_code == 0 and "ratings of 'toy | Z vs fullft | compliant' match no row" in rated.stderr
    table = pd.read_csv(io.StringIO(rated.stdout))
    assert table.loc[table["defense"] == "C", "human_legal_concept_mean"].tolist() == [4.0]
    assert table["human_raters"].notna().sum() == 1
    missing = invoke("leaderboard", "merge", a, "--ratings", tmp_path / "none.csv")
    assert missing.exit_code == 2 and str(tmp_path / "none.csv") in missing.stderr


def test_relabelled_configurations_warn():
    ci, fg = load_records(RESULTS / "ci.jsonl"), load_records(RESULTS / "freezeasguard.jsonl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_records([("ci.jsonl", ci), ("fg.jsonl", fg)])
    assert sorted(str(w.message).split(":")[0] for w in caught) == [
        "'portraits | FG-30 vs fullft | compliant' (ci.jsonl) = 'portraits | FG[p=0.3] vs fullft | compliant' (fg.jsonl)",
        "'portraits | R-30 vs fullft | compliant' (ci.jsonl) = 'portraits | R[p=0.3] vs fullft | compliant' (fg.jsonl)"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_records([("fg.jsonl", fg)])
    assert not caught
