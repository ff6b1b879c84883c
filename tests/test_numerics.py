"""Numbers that can't be silently wrong: precision is part of a cell, the device type of every stage key, the
leaderboard never mixes records of other versions, devices, worlds or models, and `run` says when it reused."""

import json

import pytest
from click.testing import CliRunner

from advbench.cache import StageCache
from advbench.cells import Cell, PluginSpec
from advbench.errors import DataError
from advbench.numerics import base_signature, check_comparable, signature
from advbench.results import cell_id
from advbench.runner import RunOptions, _CellRun
from tests.toyworld import ToyPlugin, fast_attack_args


def _cell(**kw):
    return Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", fast_attack_args()),
                PluginSpec("domain", "toy"), **kw)


def test_precision_is_part_of_the_cell_and_device_type_of_every_stage_key(temp_plugin, tmp_path):
    temp_plugin(ToyPlugin(), "toy-plugin")
    full, half = _cell(), _cell(mixed_precision="bf16")
    assert "mixed_precision" not in full.to_json()  # ids recorded before precision joined the cell are unchanged
    assert half.to_json()["mixed_precision"] == "bf16" and cell_id(half.to_json()) != cell_id(full.to_json())
    assert "bf16" in half.describe()
    keys = {}
    for name, cell, device in (("cpu", full, "cpu"), ("cpu-bf16", half, "cpu"), ("cuda", full, "cuda"),
                               ("cuda:1", full, "cuda:1")):
        run = _CellRun(cell, RunOptions(device=device), StageCache(tmp_path))
        keys[name] = run.key("adapt", {"class": "class_0"})
    assert len({keys["cpu"], keys["cpu-bf16"], keys["cuda"]}) == 3
    assert keys["cuda"] == keys["cuda:1"]  # two GPUs of one kind share stages
    with pytest.raises(Exception, match="mixed precision"):
        _cell(mixed_precision="fp8")


def _record(cid, **prov):
    return {"cell_id": cid, "provenance": prov}


def test_check_comparable_refuses_mixes_and_ignores_what_was_not_recorded():
    old = _record("a", advbench_version="0.1.0", device="cpu")  # written before domain_version existed
    new = _record("b", advbench_version="0.1.0", device="cpu", domain_version="4", model_fingerprint="f")
    check_comparable([old, new], lambda r: "portraits")
    assert signature(old)["domain version"] is None
    gpu = _record("c", advbench_version="0.1.0", device="cuda:0")
    with pytest.raises(DataError, match="device type: cell a has cpu, cell c has cuda"):
        check_comparable([old, gpu], lambda r: "portraits")
    check_comparable([old, gpu], lambda r: r["cell_id"])  # different groups never compare
    with pytest.raises(DataError, match="base model"):
        check_comparable([new, _record("d", model_fingerprint="g")], lambda r: "portraits")


def test_run_on_a_finished_cell_says_it_reused_the_record(temp_plugin, tmp_path):
    from advbench.cli.main import _attach_commands, cli

    temp_plugin(ToyPlugin(), "toy-plugin")
    _attach_commands()
    args = ["run", "--domain", "toy", "--attack-arg", "steps=2", "--attack-arg", "batch_size=2", "--no-baseline",
            "--results", str(tmp_path / "r.jsonl"), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--quiet"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and "result appended to" in first.stderr, first.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "reused that record" in again.stderr and "appended to" not in again.stderr
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["provenance"]["domain_version"] is None


def test_one_domain_under_two_settings_needs_two_labels(temp_plugin):
    from advbench.cells import domain_key

    temp_plugin(ToyPlugin(), "toy-plugin")
    plain = _cell(seed=0).to_json()
    small = Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", fast_attack_args()),
                 PluginSpec("domain", "toy", {}, "toy-small")).to_json()
    assert "label" not in plain["domain"]  # ids recorded before domain labels existed are unchanged
    assert domain_key(plain) == "toy" and domain_key(small) == "toy-small"
    assert domain_key({**small, "base": "exposed"}) == "toy-small (exposed)"
    labelled = Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", fast_attack_args()),
                    PluginSpec("domain", "toy", {}, "toy-small"))
    assert labelled.describe().startswith("toy-small | none vs ")  # what `bench --match` searches
    a = {"cell_id": "a", "cell": {"domain": {"name": "toy", "params": {"n_illegal": 2}}}, "provenance": {}}
    b = {"cell_id": "b", "cell": {"domain": {"name": "toy", "params": {"n_illegal": 1}}}, "provenance": {}}
    with pytest.raises(DataError, match="differ in domain parameters: cell a has"):
        check_comparable([a, b], lambda r: r["cell"]["domain"]["name"])
    check_comparable([a, b], lambda r: r["cell_id"])  # under two labels they are two domains


def test_one_seed_on_the_exposed_base_must_share_one_exposed_base(tmp_path):
    """Two exposures with one stage key that trained to different weights (another transformers version) are
    refused within a seed, by the leaderboard and by the merge; other seeds and the naive base are not compared."""
    from advbench.leaderboard import build_leaderboard
    from advbench.standard import load_sources, merge_records
    from tests.test_results import make_record

    def rec(defense, seed, loss):
        r = make_record(defense=defense, seed=seed)
        r["cell"]["base"] = "exposed"
        r["provenance"]["base"] = {"base": "exposed", "final_loss": loss}
        return r

    same = [rec("none", 0, 0.131), rec("guard", 0, 0.131), rec("none", 1, 0.096), rec("guard", 1, 0.096)]
    build_leaderboard(same)  # one base per seed, seeds differ: fine
    rebuilt = [rec("none", 0, 0.13119), rec("guard", 0, 0.13168)]
    with pytest.raises(DataError, match=r"'toy \(exposed\), seed 0' differ in exposed base \(final loss of its "
                                        r"fine-tuning\): cell .* has 0.13119, cell .* has 0.13168"):
        build_leaderboard(rebuilt)
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text(json.dumps(rebuilt[0]) + "\n")
    b.write_text(json.dumps(rebuilt[1]) + "\n")
    with pytest.raises(DataError, match=f"{a} .* has 0.13119, {b} .* has 0.13168; .* exposed base was rebuilt"):
        merge_records(load_sources([a, b]))
    one, other = rec("none", 1, 0.096), rec("guard", 1, 0.096)
    one["provenance"]["model_fingerprint"], other["provenance"]["model_fingerprint"] = "one world", "another"
    a.write_text(json.dumps(one) + "\n")
    b.write_text(json.dumps(other) + "\n")
    with pytest.raises(DataError, match=f"differ in .*{a} .*, {b} .*; .* merge only results of one world and model"):
        merge_records(load_sources([a, b]))
    check_comparable([_record("n", base={"base": "naive"}), _record("m")], lambda r: "toy", base_signature)
