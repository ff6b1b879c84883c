"""The report scripts in benchmarks/ that docs/results.md quotes, on hand-made records."""

import importlib.util
from pathlib import Path

from advbench.leaderboard import build_leaderboard

from tests.test_results import make_record

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rec(defense, attack, seed, illegal_recog, illegal_dist):
    r = make_record(defense=defense, attack=attack, seed=seed,
                    illegal={"a": {"dist": illegal_dist, "x-recognition": illegal_recog}},
                    legal={"b": {"dist": 0.5, "x-recognition": 0.5}},
                    higher_is_better={"dist": False, "x-recognition": True}, primary="dist")
    r["stages"].append({"stage": "adapt", "class": "a", "key": "k", "seconds": 20.0 * (seed + 1),
                        "peak_memory_mb": 100.0 + seed, "cached": False})
    return r


def test_attack_summary_tables():
    summary = load("attack_summary")
    records = [rec("none", "no-attack", s, 0.0, 0.9) for s in (0, 1)] + \
        [rec("none", "fullft", s, 0.9, 0.4) for s in (0, 1)] + [rec("guard", "fullft", s, 0.5, 0.6) for s in (0, 1)]
    text = summary.summarize(build_leaderboard(records), before="no-attack", baseline="none")
    lines = text.splitlines()
    assert "| no-attack (before) | compliant | 0.00 ± 0.00 | 0.50 ± 0.00 | 0.900 ± 0.000 | 0.500 ± 0.000 |" in lines
    assert "| fullft | compliant | 0.90 ± 0.00 | 0.50 ± 0.00 | 0.400 ± 0.000 | 0.500 ± 0.000 |" in lines
    # guard: MP = (0.6 - 0.4) / 0.4 = +0.5, LI 0; recognition left 0.9 undefended, 0.5 under guard
    assert "| fullft | +0.500 ± 0.000 | 0.000 ± 0.000 | 0.90 ± 0.00 | 0.50 ± 0.00 |" in lines
    cost = summary.cost_table(records).splitlines()
    # steps 10 (make_record's default); seeds 0 and 1 take 20 s and 40 s
    assert "| fullft | 4 | 30.0 | 3.000 | 101 |" in cost


def test_sgr_is_the_papers_similarity_gap_on_cosine_distances_and_recognition():
    sgr = load("sgr")
    # cosine distance 0.2 undefended (similarity 0.8), 0.6 defended (0.4): SGR = (0.8 − 0.4) / 0.8 = 0.5
    assert abs(sgr.sgr("identity-distance", 0.2, 0.6) - 0.5) < 1e-12
    assert abs(sgr.sgr("identity-recognition", 0.8, 0.2) - 0.75) < 1e-12  # a rate is a similarity already
    records = []
    for seed, defended in ((0, 0.6), (1, 0.4)):
        for defense, value in (("none", 0.2), ("imma", defended)):
            r = make_record(defense=defense, attack="lora", seed=seed, illegal={"a": {"identity-distance": value}},
                            legal={"b": {"identity-distance": 0.3}}, higher_is_better={"identity-distance": False},
                            primary="identity-distance")
            records.append(r)
    rows = {(row[1], row[4]): row for row in sgr.table(records, None)}
    mean = rows[("imma", "illegal")][5]
    assert abs(mean - (0.5 + 0.25) / 2) < 1e-12 and rows[("imma", "legal")][5] == 0.0


def test_bench_protect_reads_the_built_protect_stages_of_a_results_file(tmp_path, capsys):
    import json

    import pytest

    bench = load("bench_protect")
    records = []
    for seed, (label, seconds, cached) in enumerate([("IMMA-fullft", 30.0, False), ("IMMA-fullft", 50.0, False),
                                                      ("IMMA-fullft", 0.0, True), ("SOPHON", 41.5, False)]):
        r = make_record(defense="imma" if label.startswith("IMMA") else "sophon", defense_label=label, seed=seed)
        r["stages"] = [s for s in r["stages"] if s["stage"] != "protect"] + [
            {"stage": "protect", "class": None, "key": "k", "seconds": seconds, "peak_memory_mb": 1.0, "cached": cached}]
        records.append(r)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = {row[0]: row for row in zip(*[[str(c) for c in col._cells] for col in bench.from_results(path).columns])}
    assert rows["IMMA-fullft"] == ("IMMA-fullft", "toy", "2", "40.0", "30.0-50.0")  # the cached stage is left out
    assert rows["SOPHON"] == ("SOPHON", "toy", "1", "41.5", "41.5-41.5")
    with pytest.raises(SystemExit):
        bench.main(["--defense", "imma", "--from", str(path)])
    assert "not both" in capsys.readouterr().err


def test_curve_table_rows_carry_seed_intervals_and_the_verdict():
    table = load("curve_table")
    records = [rec("none", "fullft", s, 0.9, d) for s, d in ((0, 0.40), (1, 0.42), (2, 0.38))] + \
        [rec("guard", "fullft", s, 0.5, d) for s, d in ((0, 0.60), (1, 0.66), (2, 0.57))]
    df = build_leaderboard(records, intervals="all")
    lines = table.domain_table(df, df["domain"].iloc[0])
    row = next(line for line in lines if line.startswith("| guard vs fullft"))
    mp = df[df["defense"] == "guard"].iloc[0]
    assert f"+{mp['mitigation_power_mean']:.2f} [+{mp['mitigation_power_ci_low']:.2f}, " in row
    assert "0.90 → 0.50" in row and row.rstrip(" |").endswith("| yes")


def test_search_cost_counts_the_steps_of_every_rung():
    from advbench.adversaries import parse_suite

    cost = load("search_cost")
    suite = parse_suite({"id": "s", "version": 1, "steps": 200, "budgets": [25, 50, 100, 200],
                         "lr_multipliers": [0.5, 1, 2, 4, 8],
                         "ladders": [{"attack": "fullft"}, {"attack": "lora"}, {"attack": "dreambooth"},
                                     {"attack": "dreambooth-lora"}, {"attack": "textual-inversion"}]})
    assert len(suite.adversaries) == 25 and cost.search_steps(suite) == 25 * 25 + 13 * 25 + 7 * 50 + 4 * 100


def test_recognition_table_lists_illegal_and_legal_recognition_per_seed_and_defense():
    table = load("recognition_table")

    def r(defense, attack, seed, illegal, legal):
        return make_record(defense=defense, attack=attack, seed=seed,
                           illegal={"a": {"identity-recognition": illegal}},
                           legal={"b": {"identity-recognition": legal}},
                           higher_is_better={"identity-recognition": True}, primary="identity-recognition")

    records = [r("uce", "no-attack", 0, 0.25, 1.0), r("none", "no-attack", 0, 1.0, 0.75),
               r("none", "no-attack", 1, 0.5, 0.5), r("uce", "no-attack", 1, 0.75, 0.5),
               r("uce", "fullft", 0, 1.0, 1.0)]
    lines = table.tables(records, ["no-attack"], None)
    assert lines[:4] == ["toy, no-attack: identity-recognition, illegal / legal", "",
                         "| seed | none | uce |", "| --- | --- | --- |"]  # the undefended model first
    assert "| 0 | 1.00 / 0.75 | 0.25 / 1.00 |" in lines and "| 1 | 0.50 / 0.50 | 0.75 / 0.50 |" in lines
    assert "| mean | 0.75 / 0.62 | 0.50 / 0.75 |" in lines
    assert not any("fullft" in line for line in lines)  # only the attacks asked for
    assert table.tables(records, ["no-attack"], ["portraits"]) == []
