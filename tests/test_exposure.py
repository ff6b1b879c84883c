"""The exposed base: built once per domain/seed from the publisher's share only, recorded, kept apart."""

import pytest
import torch

import advbench.finetune as engine
from advbench.cells import Cell, PluginSpec, domain_key
from advbench.errors import ParamError, UserError
from advbench.leaderboard import score_records
from advbench.model import Model
from advbench.results import ResultStore, cell_id
from advbench.runner import RunOptions, run_cell
from advbench.spec import load_spec

from tests.toyworld import ToyPlugin


@pytest.fixture
def toy(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")


@pytest.fixture
def finetunes(monkeypatch):
    """Every call of the engine's finetune(): (number of examples, steps)."""
    calls = []
    real = engine.finetune

    def counting(model, examples, cfg, ctx, *args, **kwargs):
        calls.append((examples, cfg.steps))
        return real(model, examples, cfg, ctx, *args, **kwargs)

    monkeypatch.setattr(engine, "finetune", counting)
    return calls


SPEC = """
name = "exposed"
seeds = [0]
bases = ["naive", "exposed"]
[[domains]]
name = "toy"
[[defenses]]
name = "none"
[[defenses]]
name = "random"
params = { p = 0.5 }
[[attacks]]
name = "no-attack"
"""


def test_exposed_base_is_built_once_and_shared_by_two_defenses(toy, tmp_path, finetunes):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    assert [c.base for c in spec.cells] == ["naive", "naive", "exposed", "exposed"]
    options = RunOptions(cache_dir=tmp_path / "cache", progress=False)
    store = ResultStore(tmp_path / "r.jsonl")
    records = [run_cell(c, store, options) for c in spec.cells]
    assert len(finetunes) == 1, "the exposure is one fine-tune, shared by both defenses (no-attack trains nothing)"
    exposes = [[s for s in r["stages"] if s["stage"] == "expose"] for r in records]
    assert exposes[:2] == [[], []]  # the naive cells have no exposure stage
    assert [e[0]["cached"] for e in exposes[2:]] == [False, True] and exposes[2][0]["key"] == exposes[3][0]["key"]
    # the exposure read the publisher's share of all four classes and nothing else
    examples, steps = finetunes[0]
    assert steps == 2 and {e.cls for e in examples} == {"class_0", "class_1", "class_2", "class_3"}
    assert len(examples) == 4 * 4  # 10 images a class: 2 references, 4 publisher, 4 attacker
    naive, exposed = records[0], records[2]
    assert "base" not in naive["cell"] and exposed["cell"]["base"] == "exposed"
    assert naive["cell_id"] == cell_id(spec.cells[0].to_json()) != exposed["cell_id"]
    assert exposed["provenance"]["base"]["base"] == "exposed" and naive["provenance"]["base"] == {"base": "naive"}
    assert exposed["provenance"]["base"]["recipe"]["steps"] == 2
    # no attack: the exposed base generates other images than the naive one
    assert exposed["metrics"]["illegal"] != naive["metrics"]["illegal"]
    # the leaderboard compares each defense with the undefended model on the same base only
    scored = {(s["key"][0], s["key"][1]): s for s in score_records(records)}
    assert set(scored) == {("toy", "none"), ("toy", "random(p=0.5)"), ("toy (exposed)", "none"),
                           ("toy (exposed)", "random(p=0.5)")}
    assert scored[("toy (exposed)", "none")]["mitigation_power"] == pytest.approx(0.0)
    assert scored[("toy (exposed)", "random(p=0.5)")]["matched"] is True


def test_exposed_model_is_what_the_defense_receives(toy, tmp_path, temp_plugin):
    """The defense protects the exposed weights, not the naive ones."""
    seen = {}
    from advbench.hookspecs import hookimpl
    from advbench.interfaces import Defense, ProtectedModel

    class Spy(Defense):
        def protect(self, model, publisher_data, ctx):
            seen[ctx.work_dir.parent.name] = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
            seen.setdefault("nouns", publisher_data.nouns)
            return ProtectedModel(model)

    class SpyPlugin:
        @hookimpl
        def register_defenses(self, register):
            register("spy", Spy)

    temp_plugin(SpyPlugin(), "spy")
    options = RunOptions(cache_dir=tmp_path / "cache", progress=False)
    for base in ("naive", "exposed"):
        run_cell(Cell(PluginSpec("defense", "spy"), PluginSpec("attack", "no-attack"), PluginSpec("domain", "toy"),
                      base=base), None, options)
    naive, exposed = [v for k, v in seen.items() if k != "nouns"]
    from advbench.testing import tiny_model

    reference = dict(tiny_model(seed=0).unet.named_parameters())
    assert all(torch.equal(naive[n], reference[n]) for n in naive)
    assert any(not torch.equal(exposed[n], reference[n]) for n in exposed)
    exposed_dir = next((tmp_path / "cache" / "expose").iterdir()) / "model"
    saved = dict(Model.load(exposed_dir).unet.named_parameters())
    assert all(torch.equal(exposed[n], saved[n]) for n in exposed)


def test_base_validation_and_labels(toy, tmp_path):
    with pytest.raises(UserError, match="unknown base 'trained'"):
        Cell(PluginSpec("defense", "none"), PluginSpec("attack", "no-attack"), PluginSpec("domain", "toy"),
             base="trained")
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace('["naive", "exposed"]', '["exposd"]'))
    with pytest.raises(UserError, match="bases must be a non-empty list of naive and/or exposed"):
        load_spec(path)
    cell = Cell(PluginSpec("defense", "none"), PluginSpec("attack", "no-attack"), PluginSpec("domain", "toy"),
                base="exposed")
    assert cell.describe().startswith("toy (exposed base) |")
    assert domain_key(cell.to_json()) == "toy (exposed)"


def test_a_bad_exposure_recipe_is_a_param_error(toy, tmp_path, monkeypatch):
    from tests.toyworld import ToyDomain

    monkeypatch.setattr(ToyDomain, "exposure", lambda self: {"steps": 0})
    cell = Cell(PluginSpec("defense", "none"), PluginSpec("attack", "no-attack"), PluginSpec("domain", "toy"),
                base="exposed")
    with pytest.raises(ParamError, match="steps must be >= 1"):
        run_cell(cell, None, RunOptions(cache_dir=tmp_path / "cache", progress=False))
