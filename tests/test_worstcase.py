"""Worst-case cells (issue 21): `bench`/`run --adversaries` search on the selection seed, report the winner on
the other seeds, and the leaderboard compares the defense's strongest adversary with the undefended one's, with
bootstrap intervals and a verdict in words."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advbench.adversaries import parse_suite
from advbench.cells import PluginSpec
from advbench.results import ResultStore, validate_record
from advbench.runner import RunOptions
from advbench.worstcase import Job, jobs_for, run_job
from tests.test_halving import TINY_SUITE
from tests.toyworld import ToyPlugin

SPEC = """
name = "toy-worst"
seeds = [0, 1]
adversaries = "{suite}"
[[domains]]
name = "toy-images"
[[defenses]]
name = "none"
[[defenses]]
name = "random"
params = {{ p = 0.5 }}
[[attacks]]
name = "fullft"
params = {{ steps = 2, batch_size = 2 }}
"""


@pytest.fixture
def cli(grid):
    """The CLI with the toy plugin registered (by ``grid``, which every test here shares)."""
    return grid[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The spec run once for the tests that only read its results: (cli, tmp folder, results path)."""
    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    plugins.register_plugin(ToyPlugin(), "toy-plugin-grid")
    _attach_commands()
    tmp_path = tmp_path_factory.mktemp("worst")
    out, results = _bench(cli, tmp_path)
    assert out.exit_code == 0, out.output
    yield cli, tmp_path, results
    plugins.unregister_plugin("toy-plugin-grid")


def _bench(cli, tmp_path, *extra):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(suite=suite))
    results = tmp_path / "r.jsonl"
    out = CliRunner().invoke(cli, ["bench", str(spec), "--results", str(results), "--cache-dir",
                                   str(tmp_path / "cache"), "--threads", "1", *extra])
    return out, results


def test_bench_reports_each_winner_on_the_seeds_it_was_not_chosen_on(grid):
    cli, tmp_path, results = grid
    records = ResultStore(results).records()
    worst = [r for r in records if "adversary" in r["cell"]]
    plain = [r for r in records if "adversary" not in r["cell"]]
    assert len(plain) == 4  # the spec's own cells: (none, random) x fullft x 2 seeds
    assert sorted((r["cell"]["defense"]["name"], r["cell"]["seed"]) for r in worst) == [
        ("none", 0), ("none", 1), ("random", 0), ("random", 1)]
    suite = parse_suite(__import__("tomllib").loads(TINY_SUITE))
    for rec in worst:
        adversary, search = rec["cell"]["adversary"], rec["search"]
        # selection and reporting seeds are disjoint: the search ran on 10000, the record on 0 or 1
        assert adversary["selection_seed"] == search["selection_seed"] == 10_000 != rec["cell"]["seed"]
        assert adversary["id"] == search["winner"] == search["rungs"][-1]["kept"][0]
        assert adversary["fingerprint"] == suite.fingerprint() and adversary["suite"] == "tiny"
        chosen = next(a for a in suite.adversaries if a.id == adversary["id"])
        assert rec["cell"]["attack"]["name"] == chosen.attack.name
        assert rec["cell"]["attack"]["params"] == chosen.attack.resolved_params()
        assert rec["cell"]["attack"]["label"] == "worst-case[tiny@1]"
        assert [len(r["scores"]) for r in search["rungs"]] == [3, 2]
        assert search["steps_per_class"] == 3 * 1 + 2 * 1  # 3 adversaries to step 1, the kept 2 on to step 2
        assert set(search["rungs"][0]["seconds"]) == set(search["rungs"][0]["scores"]) and search["seconds"] >= 0
    # the records refuse a reported seed equal to the selection seed
    bad = json.loads(json.dumps(worst[0]))
    bad["cell"]["seed"] = 10_000
    with pytest.raises(ValueError, match="selection_seed must differ"):
        validate_record(bad)
    # a rerun finds every job done: nothing is searched or appended
    again, _ = _bench(cli, tmp_path, "--dry-run")
    assert again.output.count("done  worst-case search") == 2 and "todo" not in again.output
    before = results.read_bytes()
    rerun, _ = _bench(cli, tmp_path)
    assert rerun.exit_code == 0 and results.read_bytes() == before


def test_leaderboard_worst_case_rows_pair_the_two_strongest_adversaries(grid):
    from advbench.leaderboard import build_leaderboard

    _, _, results = grid
    df = build_leaderboard(ResultStore(results).records())
    worst = df[df["attack"] == "worst-case[tiny@1]"]
    assert set(worst["threat_model"]) == {"any"} and len(worst) == 2
    defended = worst[worst["defense"] == "random(p=0.5)"].iloc[0]
    assert defended["baseline_matched"] == "per-seed" and defended["adversary"]
    assert defended["ci_over"] == "2 seeds and images"
    low, high = defended["mitigation_power_ci_low"], defended["mitigation_power_ci_high"]
    assert low <= defended["mitigation_power_mean"] <= high
    assert defended["mitigates"].startswith("yes" if low > 0 else "no" if high < 0 else "not shown")
    plain = df[df["attack"] != "worst-case[tiny@1]"]
    assert plain["mitigation_power_ci_low"].isna().all()  # intervals only where asked (worst-case rows)
    every = build_leaderboard(ResultStore(results).records(), intervals="all")
    defended = every[every["defense"] != "none"]
    assert len(defended) == 2 and defended["mitigation_power_ci_low"].notna().all()
    assert every[every["defense"] == "none"]["mitigation_power_ci_low"].isna().all()  # a baseline has no MP


def test_run_with_adversaries_ends_with_a_worst_case_verdict(cli, tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    args = ["run", "--defense", "random", "--defense-arg", "p=0.5", "--domain", "toy-images", "--adversaries",
            str(suite), "--seed", "3", "--results", str(tmp_path / "r.jsonl"), "--cache-dir", str(tmp_path / "c"),
            "--device", "cpu", "--quiet"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    line = out.output.strip().splitlines()[-1]
    assert line.startswith("worst case (worst-case[tiny@1]): MP ") and "95% CI" in line and "mitigates: " in line
    records = ResultStore(tmp_path / "r.jsonl").records()
    assert [(r["cell"]["defense"]["name"], r["cell"]["seed"]) for r in records] == [("none", 3), ("random", 3)]
    bad = CliRunner().invoke(cli, [*args, "--attack-arg", "lr=1"])
    assert bad.exit_code == 2 and "do not apply with --adversaries" in bad.output


def test_jobs_cover_each_defense_and_the_undefended_model_once(grid):
    from advbench.cells import Cell

    attack = PluginSpec("attack", "fullft", {"steps": 2, "batch_size": 2})
    cells = [Cell(PluginSpec("defense", d, p), attack, PluginSpec("domain", "toy"), seed=s)
             for d, p in (("random", {"p": 0.5}), ("random", {"p": 0.3})) for s in (2, 0)]
    jobs = jobs_for(cells)
    assert [(j.defense.display_label(), j.seeds) for j in jobs] == [
        ("none", (0, 2)), ("random(p=0.5)", (0, 2)), ("random(p=0.3)", (0, 2))]


def test_a_killed_search_resumes_from_the_stage_cache(grid, tmp_path, monkeypatch):
    """Interrupted after the reported cells' search: the rerun trains no step again (all rungs are cached)."""
    import advbench.finetune as ft
    import tomllib

    suite = parse_suite(tomllib.loads(TINY_SUITE))
    job = Job(PluginSpec("defense", "none"), PluginSpec("domain", "toy-images"), (0,))
    options = RunOptions(cache_dir=tmp_path / "c", progress=False)
    run_job(job, suite, None, options, 10_000)  # no store: a search and a cell whose records were lost
    steps = []
    real_step = ft.Trainer.step
    monkeypatch.setattr(ft.Trainer, "step", lambda self, *a, **kw: steps.append(a[-1]) or real_step(self, *a, **kw))
    records = run_job(job, suite, ResultStore(tmp_path / "r.jsonl"), options, 10_000)
    assert steps == [] and len(records) == 1 and np.isfinite(records[0]["metrics"]["illegal"]["toy-image-brightness"])


@pytest.mark.parametrize("keep", [False, True])
def test_a_reported_search_drops_the_losers_snapshots_unless_kept(grid, tmp_path, monkeypatch, keep):
    """Once the winner's cells are in the results file the losers' adapt stages go (most of a search's disk);
    the winner's stay, and so do every candidate's images and scores."""
    import tomllib

    import advbench.halving as halving
    from advbench.cache import StageCache

    suite = parse_suite(tomllib.loads(TINY_SUITE))
    job = Job(PluginSpec("defense", "none"), PluginSpec("domain", "toy-images"), (0,))
    cache_dir, seen = tmp_path / "c", {}
    real_search = halving.worst_case_search

    def search_and_look(*args, **kwargs):  # the job's own search, and the cache as it left it
        seen["search"], cells = real_search(*args, **kwargs)
        seen["stages"] = {stage: {p.name for p in (cache_dir / stage).iterdir()} for stage in ("generate", "score")}
        return seen["search"], cells

    monkeypatch.setattr(halving, "worst_case_search", search_and_look)
    options = RunOptions(cache_dir=cache_dir, progress=False, keep_search_snapshots=keep)
    records = run_job(job, suite, ResultStore(tmp_path / "r.jsonl"), options, 10_000)
    search, cache = seen["search"], StageCache(cache_dir)
    losers = set().union(*(k for name, k in search.adapt_keys.items() if name != search.winner))
    assert len(search.adapt_keys) == len(suite.adversaries) and losers  # every candidate's snapshots are known
    assert records[0]["cell"]["adversary"]["id"] == search.winner
    assert all(cache.has("adapt", key) for key in search.adapt_keys[search.winner])
    assert [cache.has("adapt", key) for key in sorted(losers)] == [keep] * len(losers)
    for stage, names in seen["stages"].items():  # the images and scores of every rung are untouched
        assert names and names <= {p.name for p in (cache_dir / stage).iterdir()}


def test_markdown_headline_and_sensitivity_plot(grid):
    from advbench.headline import sensitivity_points

    cli, tmp_path, results = grid
    board = CliRunner().invoke(cli, ["leaderboard", str(results), "--format", "md", "--output-dir",
                                     str(tmp_path / "lb"), "--plot"])
    assert board.exit_code == 0, board.output
    md = (tmp_path / "lb" / "r.md").read_text()
    assert "## Worst case: each defense under its strongest adversary" in md
    row = next(line for line in md.splitlines() if line.startswith("| toy-images | random(p=0.5) | worst-case"))
    assert "@lr×" in row and "(fullft(batch_size=2,steps=2), compliant)" in row  # the adversary, and the default attack's MP beside it
    assert (tmp_path / "lb" / "r-sensitivity.png").stat().st_size > 1000
    points = sensitivity_points(ResultStore(results).records())
    assert sorted(p["adversary"] for p in points) == ["fullft@lr×0.5", "fullft@lr×8", "lora@lr×1"]
    assert {p["budget"] for p in points} == {1} and all(np.isfinite(p["mitigation_power"]) for p in points)


def test_sensitivity_lines_are_told_apart_by_marker_and_style(grid, tmp_path, monkeypatch):
    """Ladders often lie on the same values (MP 0): each one is drawn with its own marker and line style."""
    from advbench import plots

    _, _, results = grid
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or path)
    plots.plot_sensitivity(ResultStore(results).records(), tmp_path / "s.png")
    (fig,) = figures
    for ax in fig.axes:
        if not ax.lines:
            continue
        ladders = [line for line in ax.lines if not line.get_label().startswith("_")]  # not the MP-0 rule
        assert len({(line.get_marker(), line.get_linestyle()) for line in ladders}) == len(ladders) == 2  # fullft, lora


def test_standard_leaderboard_keeps_the_worst_case_rows_and_headline(grid):
    from advbench.standard import build_standard
    from advbench.standard_md import standard_markdown

    _, _, results = grid
    df = build_standard(ResultStore(results).records())
    worst = df[df["threat_model"] == "any"]
    assert sorted(worst["defense"]) == ["none", "random(p=0.5)"]
    assert worst[worst["defense"] != "none"]["rank"].tolist() == [1]  # ranked among its own (worst-case) group
    assert "## Worst case: each defense under its strongest adversary" in standard_markdown(df)


def test_report_opens_with_the_worst_case_table(grid, tmp_path):
    from advbench.report import write_report

    _, _, results = grid
    html = write_report([results], tmp_path / "report.html").read_text()
    assert 'id="worst-case-table"' in html and html.index("worst-case-table") < html.index("leaderboard-table")
    assert "random(p=0.5)" in html.split('id="worst-case-table"')[1].split("</table>")[0]


def test_leaderboard_command_puts_intervals_where_asked(grid, tmp_path):
    import io

    import pandas as pd

    cli, _, results = grid
    rows = {}
    for choice in ("none", "worst-case", "all"):
        out = CliRunner().invoke(cli, ["leaderboard", str(results), "--format", "csv", "--intervals", choice])
        assert out.exit_code == 0, out.output
        df = pd.read_csv(io.StringIO(out.output))
        rows[choice] = int(df["mitigation_power_ci_low"].notna().sum())
    assert rows == {"none": 0, "worst-case": 1, "all": 2}


def test_a_job_extended_to_new_seeds_keeps_its_adversary_without_searching(grid, tmp_path, monkeypatch):
    import shutil
    import tomllib

    import advbench.halving as halving

    _, grid_dir, results = grid
    shutil.copy(results, tmp_path / "r.jsonl")
    suite = parse_suite(tomllib.loads(TINY_SUITE))
    store = ResultStore(tmp_path / "r.jsonl")
    old = next(r for r in store.records() if "adversary" in r["cell"] and r["cell"]["defense"]["name"] == "none")
    monkeypatch.setattr(halving, "worst_case_search", lambda *a, **k: pytest.fail("searched again"))
    job = Job(PluginSpec("defense", "none"), PluginSpec("domain", "toy-images"), (0, 1, 5))
    records = run_job(job, suite, store, RunOptions(cache_dir=grid_dir / "cache", progress=False), 10_000)
    assert [r["cell"]["seed"] for r in records] == [0, 1, 5]
    assert {r["cell"]["adversary"]["id"] for r in records} == {old["cell"]["adversary"]["id"]}
    assert records[2]["search"] == old["search"]
