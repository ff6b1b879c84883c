"""The runner: stages, caching across cells, resume after a crash, records, threat models."""

import json

import pytest

from advbench import plugins
from advbench.cells import Cell, PluginSpec
from advbench.errors import ConstraintError, StaleResultError
from advbench.hookspecs import hookimpl
from advbench.interfaces import Attack
from advbench.results import ResultStore
from advbench.runner import RunOptions, run_cell

from tests.toyworld import Brightness, ToyPlugin, fast_attack_args


@pytest.fixture
def toy(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")


def cell(defense="none", dparams=None, attack="fullft", aparams=None, threat="compliant", seed=0):
    return Cell(PluginSpec("defense", defense, dparams or {}), PluginSpec("attack", attack, fast_attack_args() if aparams is None else aparams),
                PluginSpec("domain", "toy"), threat, seed)


def opts(tmp_path, **kw):
    return RunOptions(cache_dir=tmp_path / "cache", progress=False, **kw)


def test_cell_end_to_end_record(toy, tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    record = run_cell(cell("random", {"p": "0.5"}), store, opts(tmp_path))
    metrics = record["metrics"]
    assert metrics["primary"] == "toy-brightness"
    assert metrics["higher_is_better"] == {"toy-brightness": False, "toy-spread": True}
    assert {c: v["role"] for c, v in metrics["classes"].items()} == {
        "class_0": "illegal", "class_1": "illegal", "class_2": "legal", "class_3": "legal"}
    illegal = [metrics["classes"][c]["values"]["toy-brightness"] for c in ("class_0", "class_1")]
    assert metrics["illegal"]["toy-brightness"] == pytest.approx(sum(illegal) / 2)
    stages = [(s["stage"], s["class"]) for s in record["stages"]]
    assert stages[0] == ("protect", None)
    # steps=2 gives the default budgets 1 and 2: one attack run, two snapshots, generated and scored each
    assert record["cell"]["budgets"] == [1, 2] and [p["budget"] for p in metrics["curve"]] == [1, 2]
    # per class: 2 adapt stages, generate and score at budgets 0 (before the attack), 1 and 2
    assert stages.count(("adapt", "class_3")) == 2 and len(stages) == 1 + 4 * (2 + 3 * 2)
    assert metrics["curve"][-1]["illegal"] == metrics["illegal"]
    assert record["defense_info"]["frozen_tensors"] > 0
    assert record["cell"]["defense"]["params"] == {"p": 0.5, "unit": "tensors"}
    assert record["provenance"]["torch_threads"] >= 1
    assert record["provenance"]["torch_cpu_capability"] and isinstance(record["provenance"]["cpu"], str)
    assert [r["cell_id"] for r in store.records()] == [record["cell_id"]]
    # a rerun finds the finished cell and appends nothing
    again = run_cell(cell("random", {"p": "0.5"}), store, opts(tmp_path))
    assert again == record and len(store.records()) == 1


def test_protect_stage_is_shared_between_attacks(toy, tmp_path):
    first = run_cell(cell("random", {"p": "0.3"}), None, opts(tmp_path))
    second = run_cell(cell("random", {"p": "0.3"}, aparams={"steps": 3, "batch_size": 2}), None, opts(tmp_path))
    assert first["stages"][0]["cached"] is False
    assert second["stages"][0]["cached"] is True
    assert second["stages"][0]["key"] == first["stages"][0]["key"]
    # the before-attack images (budget 0) come from the protected model, so they are shared too
    assert all(s["cached"] == (s.get("budget") == 0) for s in second["stages"][1:])


def test_killed_run_resumes_from_cache(toy, tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "r.jsonl")
    calls = {"n": 0}
    real = Brightness.score

    def crash_once(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 8:  # budgets 0 (before the attack), 1 and 2 per class: class_2 at budget 1
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Brightness, "score", crash_once)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell(), store, opts(tmp_path))
    assert store.records() == []  # nothing half-written
    record = run_cell(cell(), store, opts(tmp_path))
    cached = {(s["stage"], s["class"], s.get("budget")): s["cached"] for s in record["stages"]}
    assert cached[("protect", None, None)] and cached[("adapt", "class_0", 1)] and cached[("score", "class_1", 2)]
    # the crash hit class_2's first score stage: its adapted models survived, class_3 had not started
    assert cached[("adapt", "class_2", 1)] and cached[("adapt", "class_2", 2)]
    assert cached[("score", "class_2", 0)] and not cached[("score", "class_2", 1)] and not cached[("adapt", "class_3", 1)]
    assert len(store.records()) == 1


class NoConstraintAttack(Attack):
    """Understands no constraint."""

    def adapt(self, protected, data, ctx):
        return protected.model.clone()


def test_constraint_the_attack_cannot_honour(toy, temp_plugin, tmp_path):
    class P:
        @hookimpl
        def register_attacks(self, register):
            register("naive", NoConstraintAttack)

    temp_plugin(P(), "naive-plugin")
    with pytest.raises(ConstraintError, match="attack 'naive' cannot honour constraint 'freeze_mask'"):
        run_cell(cell("random", attack="naive", aparams={}), None, opts(tmp_path))
    record = run_cell(cell("random", attack="naive", aparams={}, threat="unconstrained"), None, opts(tmp_path))
    assert record["cell"]["threat_model"] == "unconstrained"


def test_dataset_plugin_registered(toy):
    source = plugins.get("dataset", "toy-data")
    assert sorted(source(source.Params(per_class=6)).load().classes()) == [f"class_{i}" for i in range(4)]


def test_stage_cache_folders_hold_outputs(toy, tmp_path):
    record = run_cell(cell(), None, opts(tmp_path))
    protect = next(s for s in record["stages"] if s["stage"] == "protect")
    folder = tmp_path / "cache" / "protect" / protect["key"]
    assert (folder / ".complete").exists() and json.loads((folder / "constraints.json").read_text()) == []


def test_same_seed_same_results_other_seed_differs(toy, tmp_path):
    a = run_cell(cell("random", {"p": "0.5"}, seed=3), None, RunOptions(cache_dir=tmp_path / "a", progress=False))
    b = run_cell(cell("random", {"p": "0.5"}, seed=3), None, RunOptions(cache_dir=tmp_path / "b", progress=False))
    assert a["metrics"] == b["metrics"] and a["cell_id"] == b["cell_id"]
    assert all(not s["cached"] for s in b["stages"])
    c = run_cell(cell("random", {"p": "0.5"}, seed=4), None, RunOptions(cache_dir=tmp_path / "a", progress=False))
    assert c["metrics"]["classes"] != a["metrics"]["classes"]


def _rewrite(store, **provenance):
    lines = [json.loads(line) for line in store.path.read_text().splitlines()]
    for record in lines:
        record["provenance"].update(provenance)
        for key in [k for k, v in provenance.items() if v is None]:
            del record["provenance"][key]
    store.path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_resume_refuses_results_of_another_base_model(toy, tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    record = run_cell(cell(), store, opts(tmp_path))
    prov = record["provenance"]
    assert len(prov["model_fingerprint"]) == 64
    assert prov["metric_fingerprints"] == {"toy-brightness": None, "toy-spread": None}
    _rewrite(store, model_fingerprint="0" * 64)  # as if the shipped world had been rebuilt since
    with pytest.raises(StaleResultError, match=r"r\.jsonl already holds cell .*another base model"):
        run_cell(cell(), store, opts(tmp_path))
    _rewrite(store, model_fingerprint=None, metric_fingerprints=None)  # a record from before fingerprints
    assert run_cell(cell(), store, opts(tmp_path))["cell_id"] == record["cell_id"]


def test_retrained_metric_weights_are_rescored_and_refuse_stale_resume(toy, tmp_path, monkeypatch):
    weights = {"version": "a"}
    monkeypatch.setattr(Brightness, "fingerprint", lambda self: weights["version"])
    store = ResultStore(tmp_path / "r.jsonl")
    first = run_cell(cell(), store, opts(tmp_path))
    assert first["provenance"]["metric_fingerprints"]["toy-brightness"] == "a"
    weights["version"] = "b"
    with pytest.raises(StaleResultError, match="another metric 'toy-brightness'"):
        run_cell(cell(), store, opts(tmp_path))
    second = run_cell(cell(), None, opts(tmp_path))  # same cache: every stage but scoring is reused
    assert {s["stage"] for s in second["stages"] if not s["cached"]} == {"score"}
    assert second["provenance"]["metric_fingerprints"]["toy-brightness"] == "b"


def test_a_cells_plugins_are_resolved_once(toy, tmp_path, monkeypatch):
    import advbench.cells as cells

    built = []
    real = cells.build_params
    monkeypatch.setattr(cells, "build_params", lambda c, v, label: built.append(label) or real(c, v, label))
    run_cell(cell("random", {"p": "0.5"}), ResultStore(tmp_path / "r.jsonl"), opts(tmp_path))
    assert sorted(built) == ["attack 'fullft'", "defense 'random'", "domain 'toy'", "metric 'toy-brightness'",
                             "metric 'toy-spread'"]


def test_records_keep_the_primary_metrics_per_image_values(toy, tmp_path):
    """A mean-over-images primary metric (Metric.per_image) has its per-image values in the record at every
    budget and before the attack, their mean the class's value; a set statistic (toy-brightness) has none."""
    spec = Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", fast_attack_args()),
                PluginSpec("domain", "toy-images"))
    record = run_cell(spec, None, opts(tmp_path))
    points = [*record["metrics"]["curve"], record["metrics"]["before"]]
    for point in points:
        for row in point["classes"].values():
            values = row["per_image"]["toy-image-brightness"]
            assert len(values) == 2  # images_per_prompt 2, one prompt
            assert sum(values) / 2 == pytest.approx(row["values"]["toy-image-brightness"], abs=1e-12)
            assert set(row["per_image"]) == {"toy-image-brightness"}
    plain = run_cell(cell(), None, opts(tmp_path))
    assert all("per_image" not in row for row in plain["metrics"]["classes"].values())
