"""Anytime cells: one attack run scored at several budgets, exact snapshots, resume between budgets."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from advbench.cells import Cell, PluginSpec
from advbench.errors import UserError
from advbench.finetune import FinetuneConfig, exact_stops
from advbench.hookspecs import hookimpl
from advbench.interfaces import Attack
from advbench.model import Model
from advbench.params import param
from advbench.results import ResultStore, cell_id
from advbench.runner import RunOptions, run_cell

from tests.toyworld import ToyPlugin

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("stages", "total_seconds", "provenance", "started_at", "finished_at")


@pytest.fixture
def toy(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")


def cell(attack="fullft", budgets=None, defense="none", **aparams):
    params = {} if attack == "no-attack" else {"batch_size": 2, **aparams}
    return Cell(PluginSpec("defense", defense, {"p": 0.5} if defense == "random" else {}),
                PluginSpec("attack", attack, params), PluginSpec("domain", "toy"), budgets=budgets)


def run(c, cache, store=None):
    return run_cell(c, store, RunOptions(cache_dir=cache, progress=False))


def adapted(record, cache, cls, budget):
    """The adapted model of ``cls`` at ``budget``, loaded from the record's adapt stage."""
    key = next(s["key"] for s in record["stages"]
               if s["stage"] == "adapt" and s["class"] == cls and s.get("budget") == budget)
    return Model.load(Path(cache) / "adapt" / key / "model")


def same_weights(a: Model, b: Model) -> bool:
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    ta, tb = a.text_encoder.state_dict(), b.text_encoder.state_dict()
    return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta))


def stable(record):
    return {k: v for k, v in record.items() if k not in VOLATILE}


@pytest.mark.parametrize("attack", ["fullft", "lora", "textual-inversion"])
def test_snapshots_equal_plain_runs_of_that_many_steps(toy, tmp_path, attack):
    curve = run(cell(attack, budgets=(1, 2, 4)), tmp_path / "anytime")
    # plain one-budget cells in caches of their own, so nothing is shared with the anytime run
    plain4 = run(cell(attack, budgets=(4,)), tmp_path / "plain4")
    plain2 = run(cell(attack, budgets=(2,)), tmp_path / "plain2")
    assert curve["anytime"]["exact"] is True
    assert [p["budget"] for p in curve["metrics"]["curve"]] == [1, 2, 4]
    for cls in ("class_0", "class_3"):
        assert same_weights(adapted(curve, tmp_path / "anytime", cls, 4), adapted(plain4, tmp_path / "plain4", cls, 4))
        assert same_weights(adapted(curve, tmp_path / "anytime", cls, 2), adapted(plain2, tmp_path / "plain2", cls, 2))
        assert not same_weights(adapted(curve, tmp_path / "anytime", cls, 1),
                                adapted(curve, tmp_path / "anytime", cls, 2))
    assert curve["metrics"]["classes"] == plain4["metrics"]["classes"]
    assert curve["metrics"]["curve"][1]["classes"] == plain2["metrics"]["classes"]


def test_one_training_run_per_class(toy, tmp_path, monkeypatch):
    import advbench.finetune as ft

    calls = []
    real = ft.finetune
    monkeypatch.setattr(ft, "finetune", lambda *a, **kw: calls.append(a[2].steps) or real(*a, **kw))
    record = run(cell(budgets=(1, 2, 3)), tmp_path)
    assert calls == [3, 3, 3, 3]  # four classes, each trained once to the last budget
    generated = [(s["class"], s["budget"]) for s in record["stages"] if s["stage"] == "generate"]
    assert len(generated) == 16 and len(set(generated)) == 16  # budgets 0 (before the attack), 1, 2, 3
    # the training states exist only while a class is being trained
    assert not list((tmp_path / "adapt").glob("*/train_state.pt"))


@dataclass(frozen=True)
class DecayParams:
    steps: int = param(4, "steps")
    batch_size: int = param(2, "images per step")


class DecayingAttack(Attack):
    """Full fine-tuning with a linearly decaying learning rate."""

    anytime = True
    Params = DecayParams

    def adapt(self, protected, data, ctx):
        from advbench.finetune import finetune

        model = protected.model.clone()
        finetune(model, data.examples, FinetuneConfig(steps=self.params.steps, batch_size=self.params.batch_size, lr=1e-3,
                                                      lr_scheduler="linear"), ctx)
        return model


class DecayPlugin:
    @hookimpl
    def register_attacks(self, register):
        register("decaying", DecayingAttack)


def test_a_decaying_schedule_is_recorded_as_inexact(toy, temp_plugin, tmp_path):
    temp_plugin(DecayPlugin(), "decay-plugin")
    record = run(cell("decaying", budgets=(2, 4)), tmp_path)
    assert record["anytime"]["exact"] is False and "schedule" in record["anytime"]["note"]
    assert exact_stops(FinetuneConfig(lr_scheduler="constant"), [1])
    assert not exact_stops(FinetuneConfig(lr_scheduler="cosine"), [1])
    assert exact_stops(FinetuneConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=2), [2, 4])
    assert not exact_stops(FinetuneConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=2), [1, 4])


def test_budgets_are_validated_before_any_work(toy):
    with pytest.raises(UserError, match="increasing positive"):
        cell(budgets=(4, 2))
    with pytest.raises(UserError, match="comma-separated integers"):
        cell(budgets="1,x")
    with pytest.raises(UserError, match="must end at the attack's steps"):
        cell(budgets=(1, 2), steps=4)
    with pytest.raises(UserError, match="cannot be scored at several budgets"):
        cell("no-attack", budgets=(1, 2))
    assert cell(budgets="2,4").attack.params["steps"] == 4
    assert cell(steps=200).resolved_budgets() == (25, 50, 100, 200)  # the default ladder
    assert cell("no-attack").resolved_budgets() is None


def test_committed_record_ids_are_unchanged():
    records = ResultStore(ROOT / "results" / "world-v3" / "ci.jsonl").records()
    assert records and all(cell_id(r["cell"]) == r["cell_id"] for r in records)
    assert all(r["schema_version"] == 1 and "budgets" not in r["cell"] for r in records)


KILLER = """
import os, signal, sys
import advbench.cache as cache
from advbench import plugins
from tests.toyworld import ToyPlugin
plugins.register_plugin(ToyPlugin(), "toy-plugin")
kill_after = int(os.environ.get("KILL_AFTER_ADAPT_STAGES", "0"))
if kill_after:
    real, done = cache.StageCache.get_or_build, []
    def spy(self, stage, key, build):
        out = real(self, stage, key, build)
        if stage == "adapt":
            done.append(key)
            if len(done) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    cache.StageCache.get_or_build = spy
from advbench.cli.main import _attach_commands, cli
_attach_commands()
cli(["run", "--domain", "toy", "--attack", "fullft", "--attack-arg", "batch_size=2", "--budgets", "1,2,3,4",
     "--no-baseline", "--quiet", "--device", "cpu", *sys.argv[1:]], prog_name="advbench")
"""


def _run_cli(results, cache, kill_after=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "KILL_AFTER_ADAPT_STAGES": str(kill_after)}
    return subprocess.run([sys.executable, "-c", KILLER, "--results", str(results), "--cache-dir", str(cache)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_between_budgets_resumes_without_redoing_them(tmp_path):
    clean = _run_cli(tmp_path / "clean.jsonl", tmp_path / "clean-cache")
    assert clean.returncode == 0, clean.stderr[-2000:]
    # class_0 finishes (3 snapshots + its last budget), then class_1 reaches budget 2 and the process is killed
    killed = _run_cli(tmp_path / "killed.jsonl", tmp_path / "cache", kill_after=6)
    assert killed.returncode == -9
    assert not (tmp_path / "killed.jsonl").exists() or not (tmp_path / "killed.jsonl").read_text().strip()
    assert len(list((tmp_path / "cache" / "adapt").glob("*/train_state.pt"))) == 2  # class_1 at budgets 1 and 2
    resumed = _run_cli(tmp_path / "killed.jsonl", tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [a] = ResultStore(tmp_path / "clean.jsonl").records()
    [b] = ResultStore(tmp_path / "killed.jsonl").records()
    assert stable(a) == stable(b)  # bit-identical metrics at every budget
    adapt = {(s["class"], s["budget"]): s for s in b["stages"] if s["stage"] == "adapt"}
    assert all(adapt[("class_0", k)]["cached"] for k in (1, 2, 3, 4))
    assert adapt[("class_1", 1)]["cached"] and adapt[("class_1", 2)]["cached"]
    assert not adapt[("class_1", 3)]["cached"] and not adapt[("class_1", 4)]["cached"]
    assert adapt[("class_1", 3)]["resumed_from"] == 2  # training went on from budget 2, not from step 0
    scored = [s for s in b["stages"] if s["stage"] == "score" and s["class"] == "class_0"]
    assert len(scored) == 5 and all(s["cached"] for s in scored)  # budgets 0-4 each scored once, before the kill
    assert not list((tmp_path / "cache" / "adapt").glob("*/train_state.pt"))
    assert json.loads((tmp_path / "killed.jsonl").read_text())["cell_id"] == a["cell_id"]


def test_before_attack_point_is_scored_once_per_protected_model(toy, tmp_path):
    first = run(cell(budgets=(1, 2), defense="random"), tmp_path)
    other = run(cell("lora", budgets=(1, 2), defense="random"), tmp_path)
    before = [s for s in first["stages"] if s.get("budget") == 0]
    assert [s["stage"] for s in before] == ["generate", "score"] * 4 and not any(s["cached"] for s in before)
    # another attack on the same protected model starts from the same images: taken from the cache
    assert all(s["cached"] for s in other["stages"] if s.get("budget") == 0)
    assert first["metrics"]["before"] == other["metrics"]["before"]
    assert set(first["metrics"]["before"]["classes"]) == {"class_0", "class_1", "class_2", "class_3"}
    assert first["metrics"]["before"]["illegal"] != first["metrics"]["illegal"]
