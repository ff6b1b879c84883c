"""`--metric NAME[:k=v,...]` and a spec's `metrics`: any registered metric plugin scored beside the domain's own.

Covers the parsing, the one-line errors before any work (unknown name, bad params, a metric the domain already
has), unchanged ids of cells without added metrics, a run and a bench that score an added metric, and the
example third-party plugin's metric in a cell run from the shell after a `pip install`.
"""

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from advbench.cells import Cell, PluginSpec, metric_spec
from advbench.cli.leaderboard import load_records
from advbench.cli.main import _attach_commands, cli
from advbench.errors import UserError
from advbench.hookspecs import hookimpl
from advbench.interfaces import Metric
from advbench.numerics import check_comparable
from advbench.params import check, param
from advbench.results import cell_id
from advbench.spec import load_spec
from tests.toyworld import TOY_SPEC, ToyPlugin, fast_attack_args

ROOT = Path(__file__).resolve().parents[1]


class Quantile(Metric):
    """The q-quantile of generated pixel values / 255 (a metric with a checked parameter)."""

    higher_is_better = True
    needs_references = False

    @dataclass(frozen=True)
    class Params:
        q: float = param(0.5, "quantile in [0, 1]")

        def __post_init__(self):
            check(0 <= self.q <= 1, f"q must be in [0, 1], got {self.q}")

    def score(self, images, references, prompts, ctx, cls=None):
        import numpy as np

        return float(np.quantile(images, self.params.q) / 255)

    def fingerprint(self):
        return f"quantile {self.params.q}"  # depends on its params: a resumed run must build it with its own


class QuantilePlugin:
    @hookimpl
    def register_metrics(self, register):
        register("toy-quantile", Quantile)


@pytest.fixture
def runner(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")
    temp_plugin(QuantilePlugin(), "quantile-plugin")
    _attach_commands()
    return CliRunner()


def _run(runner, tmp_path, *args):
    return runner.invoke(cli, ["run", "--domain", "toy", "--attack-arg", "steps=2", "--attack-arg", "batch_size=2",
                               "--budgets", "2", "--results", str(tmp_path / "r.jsonl"),
                               "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--quiet", *args],
                         catch_exceptions=False)


# ------------------------------------------------------------------------------------------ parsing
def test_metric_option_parses_names_params_and_list_values():
    assert metric_spec("clip-score", "--metric") == PluginSpec("metric", "clip-score", {})
    spec = metric_spec("clean-kid:num_subsets=50, max_subset_size=8", "--metric")
    assert (spec.name, spec.params) == ("clean-kid", {"num_subsets": "50", "max_subset_size": "8"})
    listed = metric_spec("nudenet-score:classes=FEMALE_BREAST_EXPOSED,BUTTOCKS_EXPOSED,batch_size=4", "--metric")
    assert listed.params == {"classes": "FEMALE_BREAST_EXPOSED,BUTTOCKS_EXPOSED", "batch_size": "4"}
    assert metric_spec("openclip-score:checkpoint=hf:org/clip", "--metric").params == {"checkpoint": "hf:org/clip"}
    table = metric_spec({"name": "clean-kid", "params": {"num_subsets": 50}}, "spec: metrics[0]")
    assert (table.name, table.params) == ("clean-kid", {"num_subsets": 50})


@pytest.mark.parametrize("item, message", [
    (":q=1", "names no metric"),
    ("toy-quantile:q", "'q' is not key=value"),
    ("toy-quantile:=3", "has no key"),
    ("toy-quantile:q=0.1,q=0.2", "gives q twice"),
    ({"name": "x", "weights": 1}, "unknown key 'weights'"),
    ({"params": {}}, "needs a name"),
    (3, "must be a metric name"),
])
def test_malformed_metric_option_is_a_user_error(item, message):
    with pytest.raises(UserError, match=message):
        metric_spec(item, "--metric")


# --------------------------------------------------------------------------------- errors before work
@pytest.mark.parametrize("args, message", [
    (["--metric", "toy-quantil"], "Unknown metric 'toy-quantil'. Did you mean 'toy-quantile'?"),
    (["--metric", "toy-quantile:q=2"], "metric 'toy-quantile': q must be in [0, 1], got 2.0"),
    (["--metric", "toy-quantile:qq=2"], "Unknown parameter 'qq' for metric 'toy-quantile'. Did you mean 'q'?"),
    (["--metric", "toy-spread"], "metric 'toy-spread' is already scored by domain 'toy'"),
    (["--metric", "toy-quantile", "--metric", "toy-quantile:q=0.2"], "'toy-quantile' is given twice"),
    (["--metric", "toy-quantile:q"], "--metric 'toy-quantile:q': 'q' is not key=value"),
])
def test_bad_metric_is_one_line_exit_2_before_any_work(runner, tmp_path, args, message):
    out = _run(runner, tmp_path, *args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "c").exists()


def test_bad_metric_in_a_shell_is_exit_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from advbench.cli.main import main; main()", "run",
                           "--metric", "clip-scor", "--results", str(tmp_path / "r.jsonl"),
                           "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Unknown metric 'clip-scor'. Did you mean 'clip-score'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------------------ cell ids
def _cell_of(record_cell):
    """The Cell a recorded cell describes, rebuilt from its JSON the way a run would build it."""
    def spec(kind):
        entry = record_cell[kind]
        return PluginSpec(kind, entry["name"], dict(entry["params"]), entry.get("label"))

    model = record_cell["model"]
    return Cell(spec("defense"), spec("attack"), spec("domain"), record_cell["threat_model"], record_cell["seed"],
                None if model.startswith("default:") else model,
                tuple(record_cell["budgets"]) if "budgets" in record_cell else None,
                record_cell.get("base", "naive"), record_cell.get("mixed_precision", "no"),
                adversary=record_cell.get("adversary"))


def test_cells_without_added_metrics_keep_their_committed_ids():
    records = [r for path in sorted((ROOT / "results").glob("*.jsonl")) for r in load_records(path)]
    assert len(records) > 100
    for record in records:
        cell = _cell_of(record["cell"])
        assert "metrics" not in cell.to_json()
        assert cell_id(cell.to_json()) == record["cell_id"], record["cell"]


def test_added_metrics_join_the_cell_sorted_with_resolved_params(runner):
    def cell(*metrics):
        return Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", fast_attack_args()),
                    PluginSpec("domain", "toy"), metrics=tuple(metrics))

    plain = cell()
    added = cell(metric_spec("toy-quantile:q=0.9", "--metric"))
    assert added.to_json()["metrics"] == [{"name": "toy-quantile", "params": {"q": 0.9}}]
    assert cell_id(added.to_json()) != cell_id(plain.to_json())
    default = cell(metric_spec("toy-quantile", "--metric"))
    assert default.to_json()["metrics"] == [{"name": "toy-quantile", "params": {"q": 0.5}}]
    assert cell_id(default.to_json()) == cell_id(cell(metric_spec("toy-quantile:q=0.5", "-")).to_json())


# ----------------------------------------------------------------------------------- runs and specs
def test_run_scores_the_added_metric_for_both_roles_and_the_baseline(runner, tmp_path):
    out = _run(runner, tmp_path, "--defense", "random", "--metric", "toy-quantile:q=0.9")
    assert out.exit_code == 0, out.output
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["cell"]["defense"]["name"] for r in records] == ["random", "none"]
    for record in records:
        metrics = record["metrics"]
        assert metrics["higher_is_better"]["toy-quantile"] is True and metrics["primary"] == "toy-brightness"
        for role in ("illegal", "legal"):
            assert 0 <= metrics[role]["toy-quantile"] <= 1 and "toy-brightness" in metrics[role]
        assert all("toy-quantile" in c["values"] for p in metrics["curve"] for c in p["classes"].values())
        assert record["cell"]["metrics"] == [{"name": "toy-quantile", "params": {"q": 0.9}}]
        assert record["provenance"]["metric_fingerprints"] == {"toy-brightness": None, "toy-spread": None,
                                                               "toy-quantile": "quantile 0.9"}
        assert record["provenance"]["plugins"]["metric"]["toy-quantile"]["plugin"] == "quantile-plugin"
    # the same run again reuses both records: the staleness check rebuilds the added metric with its own params
    same = _run(runner, tmp_path, "--defense", "random", "--metric", "toy-quantile:q=0.9")
    assert same.exit_code == 0 and "was already in" in same.output and "taken from" in same.output, same.output
    # the added metric's params join the score stage key: another q scores again, everything else is cached
    again = _run(runner, tmp_path, "--defense", "random", "--no-baseline", "--metric", "toy-quantile:q=0.1")
    assert again.exit_code == 0, again.output
    last = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    fresh = {s["stage"] for s in last["stages"] if not s["cached"]}
    assert fresh == {"score"}
    assert last["metrics"]["illegal"]["toy-quantile"] <= records[0]["metrics"]["illegal"]["toy-quantile"]


def test_spec_metrics_strings_tables_and_the_bench_option(runner, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('metrics = ["toy-quantile:q=0.25"]\n' + TOY_SPEC)
    cells = load_spec(spec).cells
    assert [(m.name, m.params) for m in cells[0].metrics] == [("toy-quantile", {"q": "0.25"})]
    tables = tmp_path / "t.toml"
    tables.write_text(TOY_SPEC + '[[metrics]]\nname = "toy-quantile"\nparams = { q = 0.75 }\n')
    assert load_spec(tables).cells[0].to_json()["metrics"] == [{"name": "toy-quantile", "params": {"q": 0.75}}]
    with pytest.raises(UserError, match="'toy-quantile' is given twice"):
        load_spec(spec, metrics=(metric_spec("toy-quantile", "--metric"),))
    bad = tmp_path / "bad.toml"
    bad.write_text('metrics = ["toy-quantle"]\n' + TOY_SPEC)
    out = runner.invoke(cli, ["bench", str(bad), "--dry-run"], catch_exceptions=False)
    assert out.exit_code == 2 and "Did you mean 'toy-quantile'?" in out.output and "Traceback" not in out.output
    results = tmp_path / "b.jsonl"
    (tmp_path / "plain.toml").write_text(TOY_SPEC)
    out = runner.invoke(cli, ["bench", str(tmp_path / "plain.toml"), "--results", str(results), "--cache-dir",
                              str(tmp_path / "c"), "--device", "cpu", "--metric", "toy-quantile:q=0.5"],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    record = json.loads(results.read_text())
    assert "toy-quantile" in record["metrics"]["illegal"] and record["cell"]["metrics"][0]["name"] == "toy-quantile"


def test_records_with_and_without_an_added_metric_compare_on_the_metrics_both_have():
    def record(cid, **fingerprints):
        return {"cell_id": cid, "provenance": {"metric_fingerprints": fingerprints}}

    check_comparable([record("a", kid="k"), record("b", kid="k", extra=None)], lambda r: "toy")
    with pytest.raises(Exception, match="metric 'kid' weights"):
        check_comparable([record("a", kid="k"), record("b", kid="other", extra=None)], lambda r: "toy")
    with pytest.raises(Exception, match="metric 'kid' weights"):  # a fingerprint where there was none
        check_comparable([record("a", kid=None), record("b", kid="k")], lambda r: "toy")


# ------------------------------------------------------------------------- a third-party metric, installed
def test_example_plugin_metric_in_a_shell_run_and_its_leaderboard(tmp_path):
    """A user's path: `pip install` the example plugin, `advbench run --metric example-brightness` on the tiny
    world, then `advbench leaderboard`: the metric is in both roles of both records and in the CSV."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "plugins" / "example-plugin")], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    advbench = [sys.executable, "-c", "from advbench.cli.main import main; main()"]
    results = tmp_path / "r.jsonl"
    run = subprocess.run([*advbench, "run", "--defense", "random", "--attack", "fullft", "--attack-arg", "steps=2",
                          "--attack-arg", "batch_size=2", "--budgets", "1,2", "--domain", "portraits",
                          *[a for kv in ("n_illegal=1", "n_legal=1", "steps=2", "images_per_prompt=2")
                            for a in ("--domain-arg", kv)],
                          "--metric", "example-brightness", "--results", str(results), "--cache-dir",
                          str(tmp_path / "cache"), "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    records = load_records(results)
    assert [r["cell"]["defense"]["name"] for r in records] == ["random", "none"]
    for record in records:
        assert record["metrics"]["higher_is_better"]["example-brightness"] is False
        for role in ("illegal", "legal"):
            assert 0 <= record["metrics"][role]["example-brightness"] <= 1
        source = record["provenance"]["plugins"]["metric"]["example-brightness"]["plugin"]
        assert source == "advbench-example-plugin:example"
    board = subprocess.run([*advbench, "leaderboard", str(results), "--output-dir", str(tmp_path / "lb"),
                            "--name", "m"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert board.returncode == 0, board.stderr
    with open(tmp_path / "lb" / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"illegal_example-brightness_mean", "legal_example-brightness_mean"} <= set(rows[0])
    assert all(0 <= float(row["illegal_example-brightness_mean"]) <= 1 for row in rows) and len(rows) == 2
