"""The results store: schema validation, atomic append under a crash, resume ids, errors with line numbers."""

import json
import subprocess
import sys

import pytest

from advbench import results, safeio
from advbench.errors import DataError
from advbench.provenance import git_state, provenance
from advbench.results import ResultStore, cell_id, config_hash, validate_record


def make_record(defense="none", attack="fullft", domain="toy", seed=0, threat="compliant", illegal=None, legal=None,
                higher_is_better=None, primary="dist", defense_label=None, attack_label=None, attack_params=None):
    """A schema-1 record with chosen per-class values: ``illegal``/``legal`` map class → {metric: value}."""
    illegal = illegal if illegal is not None else {"a": {"dist": 1.0}}
    legal = legal if legal is not None else {"b": {"dist": 2.0}}
    higher_is_better = higher_is_better or {"dist": False}
    cell = {"defense": {"name": defense, "params": {}, "label": defense_label or defense},
            "attack": {"name": attack, "params": attack_params or {"steps": 10}, "label": attack_label or attack},
            "domain": {"name": domain, "params": {}}, "model": f"default:{domain}", "threat_model": threat,
            "seed": seed}
    classes = {c: {"role": "illegal", "values": v} for c, v in illegal.items()}
    classes.update({c: {"role": "legal", "values": v} for c, v in legal.items()})

    def mean(group):
        return {m: sum(v[m] for v in group.values()) / len(group) for m in higher_is_better} if group else {}

    return {"schema_version": 1, "cell_id": cell_id(cell), "config_hash": config_hash(cell), "cell": cell,
            "metrics": {"primary": primary, "higher_is_better": higher_is_better, "classes": classes,
                        "illegal": mean(illegal), "legal": mean(legal)},
            "defense_info": {}, "stages": [{"stage": "protect", "class": None, "key": "k", "seconds": 0.5,
                                            "peak_memory_mb": 10.0, "cached": False}],
            "total_seconds": 1.5, "provenance": {"device": "cpu"},
            "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:00:01.500000+00:00"}


def test_config_hash_is_canonical_and_cell_id_is_its_prefix():
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 64
    assert config_hash(a) != config_hash({"x": 2, "y": {"b": 2, "a": [1, 2]}})
    assert cell_id(a) == config_hash(a)[:16]


def test_append_read_and_resume_ids(tmp_path):
    store = ResultStore(tmp_path / "deep" / "dir" / "r.jsonl")  # parent folders are created
    assert store.records() == [] and store.finished_ids() == set()
    first, second = make_record(seed=0), make_record(seed=1)
    assert first["cell_id"] != second["cell_id"]
    assert store.append(first) is True
    assert store.append(second) is True
    assert store.records() == [first, second]
    assert store.finished_ids() == {first["cell_id"], second["cell_id"]}
    assert store.has(first["cell_id"]) and not store.has(make_record(seed=2)["cell_id"])
    # the same cell again is not duplicated
    assert store.append(first) is False
    assert len(store.path.read_text().splitlines()) == 2


def test_crash_during_append_leaves_file_unchanged(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append(make_record(seed=0))
    before = store.path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated power cut before the rename")

    monkeypatch.setattr(safeio.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.append(make_record(seed=1))
    assert store.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # temp file cleaned up
    monkeypatch.undo()
    store.append(make_record(seed=1))
    assert [r["cell"]["seed"] for r in store.records()] == [0, 1]


def test_killed_writer_never_leaves_half_record(tmp_path):
    """SIGKILL a process in the middle of writing the temp file: the results file keeps whole records only."""
    path = tmp_path / "r.jsonl"
    ResultStore(path).append(make_record(seed=0))
    big = make_record(seed=1)
    big["defense_info"] = {"blob": "x" * 2_000_000}
    script = f"""
import json, os, signal, sys
from advbench import results, safeio
def die(fd):
    os.kill(os.getpid(), signal.SIGKILL)
safeio.os.fsync = die
results.ResultStore({str(path)!r}).append(json.loads(sys.stdin.read()))
"""
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(big), text=True, capture_output=True)
    assert proc.returncode == -9, proc.stderr
    records = ResultStore(path).records()
    assert [r["cell"]["seed"] for r in records] == [0]


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2 is not a JSON object: Expecting value"),
    ("[1, 2]", "line 2 is not a JSON object: got a list"),
    ('{"schema_version": 3}', "line 2 is not an advbench result record: schema_version must be one of 1, 2"),
    ('{"schema_version": 1, "cell_id": "x"}', "line 2 is not an advbench result record: missing keys: config_hash"),
    ('{"schema_version": 2, "cell_id": "x"}', "line 2 is not an advbench result record: missing keys: config_hash"),
])
def test_malformed_line_is_a_data_error_with_line_number(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record()) + "\n" + line + "\n")
    store = ResultStore(path)
    with pytest.raises(DataError, match="fix or remove that line") as info:
        store.records()
    assert message in str(info.value) and str(path) in str(info.value)
    # a corrupt file is not extended
    with pytest.raises(DataError):
        store.append(make_record(seed=5))
    assert path.read_text().splitlines()[1] == line


def test_blank_lines_and_missing_final_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n" + json.dumps(make_record(seed=0)))  # hand-edited: no final newline
    store = ResultStore(path)
    store.append(make_record(seed=1))
    assert [r["cell"]["seed"] for r in store.records()] == [0, 1]


def test_results_path_that_is_a_folder(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        ResultStore(tmp_path).records()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["cell"].update(threat_model="sneaky"), "cell.threat_model"),
    (lambda r: r["metrics"].update(primary="fid"), "metrics.primary"),
    (lambda r: r["metrics"]["classes"]["a"].update(role="neutral"), "metrics.classes.a.role"),
    (lambda r: r["metrics"]["illegal"].update(dist=float("nan")), "finite numbers"),
    (lambda r: r["stages"][0].update(stage="train"), "stages[0].stage"),
    (lambda r: r["cell"]["defense"].pop("label"), "cell.defense.label"),
    (lambda r: r.pop("provenance"), "missing keys: provenance"),
])
def test_validate_record_rejects_malformed_records(tmp_path, mutate, message):
    rec = make_record()
    validate_record(rec)
    mutate(rec)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ResultStore(tmp_path / "r.jsonl").append(rec)
    assert not (tmp_path / "r.jsonl").exists()


def test_provenance_without_torch_import(monkeypatch):
    prov = provenance("cpu", extra={"torch_threads": 1, "plugins": {"defense": {"none": {"version": "0.1.0"}}}})
    assert prov["device"] == "cpu" and prov["torch_threads"] == 1
    assert prov["plugins"]["defense"]["none"]["version"] == "0.1.0"
    assert prov["advbench_version"] and prov["python"].count(".") == 2 and prov["cpu_count"] >= 1
    assert set(prov["packages"]) >= {"torch", "diffusers", "transformers", "peft", "accelerate"}
    assert prov["packages"]["torch"]  # found from metadata
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert prov["git_dirty"] in (None, True, False)
    assert isinstance(prov["cpu"], str)
    json.dumps(prov)  # JSON-able


def test_cpu_model_reads_cpuinfo(monkeypatch, tmp_path):
    from advbench import provenance as prov_module

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Test 9999\nflags\t: fpu\n")
    real_path = prov_module.Path
    monkeypatch.setattr(prov_module, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert prov_module.cpu_model() == "Intel(R) Xeon(R) Test 9999"
    monkeypatch.setattr(prov_module, "Path", lambda p: tmp_path / "missing" if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(prov_module.platform, "processor", lambda: "arm64")
    assert prov_module.cpu_model() == "arm64"


def test_git_state_outside_a_repository(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_results_module_does_not_import_torch():
    code = "import sys, advbench.results, advbench.leaderboard; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def v2_record():
    """A schema-2 record built by the runner's record builder: two budgets of one illegal and one legal class."""
    cell = {"defense": {"name": "none", "params": {}, "label": "none"},
            "attack": {"name": "fullft", "params": {"steps": 4}, "label": "fullft"},
            "domain": {"name": "toy", "params": {}}, "model": "default:toy", "threat_model": "compliant", "seed": 0,
            "budgets": [2, 4]}
    curve = [(b, {"a": {"role": "illegal", "values": {"dist": d}}, "b": {"role": "legal", "values": {"dist": d + 1}}})
             for b, d in ((2, 0.5), (4, 0.25))]
    return results.build_record(cell, curve, "dist", {"dist": False},
                                {"budget_param": "steps", "exact": True, "note": ""}, defense_info={}, stages=[],
                                total_seconds=1.0, provenance={}, started_at="t0", finished_at="t1")


def test_schema_2_record_holds_the_curve_and_its_last_point():
    rec = v2_record()
    assert rec["schema_version"] == 2 and rec["cell_id"] == cell_id(rec["cell"])
    assert [p["budget"] for p in rec["metrics"]["curve"]] == [2, 4]
    assert rec["metrics"]["illegal"] == {"dist": 0.25} and rec["metrics"]["legal"] == {"dist": 1.25}
    validate_record(json.loads(json.dumps(rec)))


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r["metrics"]["curve"].pop(0), "must be the cell's budgets"),
    (lambda r: r["cell"].update(budgets=[4, 2]), "cell.budgets must be an increasing list"),
    (lambda r: r["metrics"].update(illegal={"dist": 0.5}), "must equal the last point"),
    (lambda r: r.pop("anytime"), "missing keys: anytime"),
    (lambda r: r["anytime"].update(exact="yes"), "anytime must be an object"),
    (lambda r: r["stages"].append({"stage": "adapt", "class": "a", "key": "k", "seconds": 1, "peak_memory_mb": 1,
                                   "cached": False, "budget": "2"}), "budget must be an integer"),
])
def test_schema_2_validation_names_the_problem(corrupt, message):
    rec = v2_record()
    corrupt(rec)
    with pytest.raises(ValueError, match=message):
        validate_record(rec)
