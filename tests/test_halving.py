"""Successive halving (issue 21 groundwork): the strongest candidate survives every rung, ties are deterministic,
and a rung continues the attack from the previous rung's state, so no optimizer step is trained twice."""

import math

import pytest

from advbench.cells import Cell, PluginSpec
from advbench.halving import rung_scores, successive_halving
from advbench.runner import RunOptions, run_cell
from tests.toyworld import ToyPlugin

# Eight synthetic adversaries with known curves: identity distance (lower = stronger) against the budget.
CURVES = {
    "slow-but-best": lambda b: 1.0 / b,          # 0.25 at 4 ... 0.0625 at 16
    "fast-plateau": lambda b: 0.2 + 0.01 * b,    # strongest at the first rung, then overtaken
    "steady": lambda b: 2.0 / b,
    "weak": lambda b: 0.9,
    "diverges": lambda b: math.nan,
    "weak-twin": lambda b: 0.9,
    "medium": lambda b: 0.5,
    "late": lambda b: 0.6 - 0.03 * b,
}


def test_the_strongest_survives_every_rung_and_nothing_is_scored_twice():
    calls = []

    def score(name, budget):
        calls.append((name, budget))
        return CURVES[name](budget)

    result = successive_halving(list(CURVES), [4, 8, 16], score, higher_is_stronger=False)
    assert [r.budget for r in result.rungs] == [4, 8, 16]
    for rung in result.rungs:
        finite = {n: v for n, v in rung.scores.items() if not math.isnan(v)}
        best = min(finite.values())
        assert finite[rung.kept[0]] == best  # the strongest at every rung is kept, first
        assert all(finite.get(n, math.inf) >= best for n in rung.scores)
    assert [len(r.scores) for r in result.rungs] == [8, 4, 2]
    assert result.rungs[0].kept == ["fast-plateau", "slow-but-best", "late", "steady"]
    assert result.winner == "slow-but-best"  # 1/16 beats every other curve at the last budget
    assert len(calls) == len(set(calls)) == 14
    assert "diverges" not in result.rungs[0].kept  # NaN is the weakest score


def test_ties_go_to_the_first_listed_and_the_search_is_deterministic():
    flat = {name: (lambda b: 0.5) for name in ("c", "a", "b", "d")}
    result = successive_halving(list(flat), [1, 2], lambda n, b: flat[n](b), higher_is_stronger=True)
    assert result.rungs[0].kept == ["c", "a"] and result.winner == "c"
    again = successive_halving(list(flat), [1, 2], lambda n, b: flat[n](b), higher_is_stronger=True)
    assert again.rungs == result.rungs


@pytest.mark.parametrize("candidates, budgets, keep, message", [
    ([], [1], 0.5, "distinct and non-empty"),
    (["a", "a"], [1], 0.5, "distinct and non-empty"),
    (["a"], [2, 1], 0.5, "strictly increasing"),
    (["a"], [0, 1], 0.5, "strictly increasing"),
    (["a"], [1], 1.0, "keep must be a fraction"),
])
def test_bad_searches_are_refused(candidates, budgets, keep, message):
    with pytest.raises(ValueError, match=message):
        successive_halving(candidates, budgets, lambda n, b: 0.0, True, keep)


def _cell(budgets=(1, 2, 4)):
    return Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", {"batch_size": 2}),
                PluginSpec("domain", "toy"), budgets=budgets)


def test_rungs_continue_the_attack_and_the_full_cell_trains_only_the_rest(temp_plugin, tmp_path, monkeypatch):
    import advbench.finetune as ft

    temp_plugin(ToyPlugin(), "toy-plugin")
    steps = []
    real_step = ft.Trainer.step
    monkeypatch.setattr(ft.Trainer, "step", lambda self, *a, **kw: steps.append(a[-1]) or real_step(self, *a, **kw))
    options = RunOptions(cache_dir=tmp_path / "rungs", progress=False)
    first = rung_scores(_cell(), 1, options).values
    illegal = sorted(first)
    assert steps == [0] * len(illegal)  # one step per illegal class, then stopped
    second = rung_scores(_cell(), 2, options).values
    assert steps[len(illegal):] == [1] * len(illegal)  # on from step 1: step 0 is not trained again
    assert rung_scores(_cell(), 2, options).values == second and len(steps) == 2 * len(illegal)  # cached
    record = run_cell(_cell(), None, options)
    legal = [c for c, v in record["metrics"]["classes"].items() if v["role"] == "legal"]
    # every class trained each of its 4 steps exactly once: the illegal ones went on from the rungs' step 2
    assert sorted(steps) == sorted([0, 1, 2, 3] * (len(illegal) + len(legal)))
    # the rungs' numbers are the cell's own at those budgets: stopping and continuing changes nothing
    fresh = run_cell(_cell(), None, RunOptions(cache_dir=tmp_path / "fresh", progress=False))
    assert record["metrics"]["classes"] == fresh["metrics"]["classes"]
    curve = {p["budget"]: p["classes"] for p in fresh["metrics"]["curve"]}
    assert {c: curve[1][c]["values"] for c in illegal} == first
    assert {c: curve[2][c]["values"] for c in illegal} == second
    assert not list((tmp_path / "rungs" / "adapt").glob("*/train_state.pt"))  # the finished cell cleaned up


def test_stop_after_must_be_a_budget_of_the_cell(temp_plugin, tmp_path):
    temp_plugin(ToyPlugin(), "toy-plugin")
    with pytest.raises(ValueError, match="stop_after=3 is not one of the cell's budgets"):
        rung_scores(_cell(), 3, RunOptions(cache_dir=tmp_path, progress=False))


def test_worst_case_search_on_selection_seeds_trains_each_rung_once(temp_plugin, tmp_path, monkeypatch):
    import advbench.finetune as ft
    from advbench.adversaries import parse_suite
    from advbench.halving import SELECTION_SEED, worst_case_search

    temp_plugin(ToyPlugin(), "toy-plugin")
    suite = parse_suite({"id": "tiny", "version": 1, "steps": 2, "budgets": [1, 2], "lr_multipliers": [0.5, 8],
                         "ladders": [{"attack": "fullft", "params": {"batch_size": 2}},
                                     {"attack": "lora", "params": {"batch_size": 2}, "lr_multipliers": [1]}]})
    steps = []
    real_step = ft.Trainer.step
    monkeypatch.setattr(ft.Trainer, "step", lambda self, *a, **kw: steps.append(a[-1]) or real_step(self, *a, **kw))
    options = RunOptions(cache_dir=tmp_path, progress=False)
    search, cells = worst_case_search(PluginSpec("defense", "none"), PluginSpec("domain", "toy"), suite, options)
    assert all(c.seed == SELECTION_SEED for c in cells.values())
    assert [len(r.scores) for r in search.rungs] == [3, 2]  # ceil(3 / 2) = 2 go on to the last budget
    illegal = 2  # the toy domain's illegal classes; its legal ones are never trained in a search
    assert sorted(steps) == sorted([0] * 3 * illegal + [1] * 2 * illegal)  # no step trained twice
    last = search.rungs[-1].scores
    assert last[search.winner] == min(last.values())  # a brightness distance: lower is the stronger forgery
    with pytest.raises(ValueError, match="must be >= 10000"):
        worst_case_search(PluginSpec("defense", "none"), PluginSpec("domain", "toy"), suite, options, seed=0)


TINY_SUITE = """
id = "tiny"
version = 1
steps = 2
budgets = [1, 2]
lr_multipliers = [0.5, 8]
[[ladders]]
attack = "fullft"
params = { batch_size = 2 }
[[ladders]]
attack = "lora"
params = { batch_size = 2 }
lr_multipliers = [1]
"""


def test_search_command_prints_and_writes_both_searches(temp_plugin, tmp_path):
    import json

    from click.testing import CliRunner

    from advbench.cli.main import _attach_commands, cli

    temp_plugin(ToyPlugin(), "toy-plugin")
    _attach_commands()
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    args = ["search", "--defense", "random", "--defense-arg", "p=0.5", "--domain", "toy", "--adversaries", str(suite),
            "-o", str(tmp_path / "out" / "search.json"), "--cache-dir", str(tmp_path / "c"), "--device", "cpu",
            "--quiet"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "out" / "search.json").read_text())
    assert summary["suite"]["id"] == "tiny" and summary["selection_seed"] == 10_000
    assert set(summary["searches"]) == {"random(p=0.5)", "none"}
    for label, found in summary["searches"].items():
        assert [len(r["scores"]) for r in found["rungs"]] == [3, 2] and found["winner"] in found["rungs"][1]["kept"]
        assert f"{label}: successive halving, winner {found['winner']}" in out.output
    bad = CliRunner().invoke(cli, [*args[:7], "--adversaries", str(tmp_path / "none.toml")])
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith("Error: adversary suite")
    seed = CliRunner().invoke(cli, [*args, "--selection-seed", "3"])
    assert seed.exit_code == 2 and "10000" in seed.output
