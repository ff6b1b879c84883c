"""The CLI: run/bench/list/show, plugin commands, and one-line exit-2 errors that write nothing."""

import json

import click
import pytest
from click.testing import CliRunner

from advbench.cli.main import _attach_commands, cli
from advbench.hookspecs import hookimpl

from tests.toyworld import ToyPlugin


@pytest.fixture
def runner(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")
    _attach_commands()
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_run_prints_illegal_legal_table(runner, tmp_path):
    import torch

    results = tmp_path / "r.jsonl"
    threads = torch.get_num_threads()
    try:
        out = invoke(runner, "run", "--defense", "random", "--defense-arg", "p=0.3", "--attack", "fullft",
                     "--attack-arg", "steps=2", "--attack-arg", "batch_size=2", "--domain", "toy",
                     "--results", str(results), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--quiet",
                     "--threads", "1")
    finally:
        torch.set_num_threads(threads)
    assert out.exit_code == 0, out.output
    assert {r["provenance"]["torch_threads"] for r in map(json.loads, results.read_text().splitlines())} == {1}
    assert "mean illegal" in out.output and "mean legal" in out.output and "class_3" in out.output
    # the verdict: the undefended cell ran too, and MP/LI are printed at each budget (default 1 and 2 here)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["cell"]["defense"]["name"] for r in records] == ["random", "none"]
    assert "Verdict" in out.output and "MP ↑" in out.output and "MP-AUC" in out.output
    # readable in an 80-column terminal: nothing cut with "…", no table line wider than 80
    assert [line for line in out.output.splitlines() if "…" in line or len(line) > 80
            and str(tmp_path) not in line] == []


def test_second_run_takes_the_undefended_cell_from_results_or_cache(runner, tmp_path):
    common = ["--attack", "fullft", "--attack-arg", "steps=2", "--attack-arg", "batch_size=2", "--domain", "toy",
              "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--quiet"]
    first = invoke(runner, "run", "--defense", "random", "--results", str(tmp_path / "a.jsonl"), *common)
    assert first.exit_code == 0 and "0 of 33 stages from the stage cache" in first.output, first.output
    again = invoke(runner, "run", "--defense", "random", "--defense-arg", "p=0.6", "--results",
                   str(tmp_path / "a.jsonl"), *common)
    assert f"taken from {tmp_path / 'a.jsonl'}" in again.output
    fresh = invoke(runner, "run", "--defense", "random", "--defense-arg", "p=0.6", "--results",
                   str(tmp_path / "b.jsonl"), *common)
    assert "33 of 33 stages from the stage cache" in fresh.output, fresh.output
    alone = invoke(runner, "run", "--defense", "random", "--no-baseline", "--results", str(tmp_path / "c.jsonl"),
                   *common)
    assert "Verdict" not in alone.output and len((tmp_path / "c.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--defense", "radnom"], "Unknown defense 'radnom'. Did you mean 'random'?"),
    (["--attack", "fulft"], "Unknown attack 'fulft'. Did you mean 'fullft'?"),
    (["--domain", "toyy"], "Unknown domain 'toyy'. Did you mean 'toy'?"),
    (["--defense", "random", "--defense-arg", "p=2"], "defense 'random': p must be in (0, 1), got 2.0"),
    (["--defense", "random", "--defense-arg", "q=0.2"], "Unknown parameter 'q' for defense 'random'."),
    (["--attack-arg", "steps=two"], "parameter 'steps' must be an integer, not 'two'"),
    (["--attack-arg", "steps"], "--attack-arg 'steps' is not key=value"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runner, tmp_path, args, message):
    results = tmp_path / "r.jsonl"
    out = invoke(runner, "run", "--domain", "toy", "--results", str(results), "--cache-dir", str(tmp_path / "c"),
                 "--quiet", *args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert not results.exists()


def test_corrupt_results_file_is_reported_before_work(runner, tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text("not json\n")
    out = invoke(runner, "run", "--domain", "toy", "--results", str(results), "--cache-dir", str(tmp_path / "c"))
    assert out.exit_code == 2 and "line 1" in out.output
    assert not (tmp_path / "c").exists()


SPEC = """
name = "toy-grid"
seeds = [0, 1]
[[domains]]
name = "toy"
[[defenses]]
name = "none"
[[defenses]]
name = "random"
sweep = { p = [0.3, 0.6] }
[[attacks]]
name = "fullft"
params = { steps = 2, batch_size = 2 }
"""


def test_bench_grid_resume_and_check(runner, tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(SPEC)
    results = tmp_path / "grid.jsonl"
    common = ["--results", str(results), "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]
    out = invoke(runner, "bench", str(spec), *common)
    assert out.exit_code == 0, out.output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 6
    assert {r["cell"]["defense"]["label"] for r in records} == {"none", "random[p=0.3]", "random[p=0.6]"}
    # a second run finds every cell done
    again = invoke(runner, "bench", str(spec), *common, "--dry-run")
    assert again.output.count("done") == 6 and "todo" not in again.output
    # swept labels are shown as written, not eaten as rich markup
    assert "random[p=0.3]" in again.output and "random[p=0.6]" in again.output
    board = tmp_path / "board"
    out = invoke(runner, "leaderboard", str(results), "--output-dir", str(board), "--name", "toy")
    assert out.exit_code == 0, out.output
    csv = next(board.glob("*.csv"))
    ok = invoke(runner, "bench", str(spec), *common, "--check", str(csv))
    assert ok.exit_code == 0, ok.output
    # a baseline that expects far more mitigation than measured makes the check fail
    import pandas as pd

    df = pd.read_csv(csv)
    df["mitigation_power_mean"] = df["mitigation_power_mean"] + 10
    worse = tmp_path / "expect.csv"
    df.to_csv(worse, index=False)
    bad = invoke(runner, "bench", str(spec), *common, "--check", str(worse))
    assert bad.exit_code == 1


@pytest.mark.parametrize("text, message", [
    ("seeds = [0]\n", "needs at least one [[domains]]"),
    ("sedes = [0]\n", "unknown key 'sedes'. Did you mean 'seeds'?"),
    ("[[domains]\n", "is not valid TOML"),
    (SPEC.replace('name = "none"', 'name = "nonee"'), "Unknown defense 'nonee'"),
])
def test_bad_spec_exit_2(runner, tmp_path, text, message):
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    out = invoke(runner, "bench", str(spec), "--results", str(tmp_path / "r.jsonl"))
    assert out.exit_code == 2 and message in out.output, out.output
    assert not (tmp_path / "r.jsonl").exists()


def test_list_and_show(runner):
    out = invoke(runner, "list")
    assert out.exit_code == 0 and "toy-brightness" in out.output and "advbench:builtin_defenses" in out.output
    shown = invoke(runner, "show", "defense", "random")
    assert shown.exit_code == 0 and "unit" in shown.output and "0.3" in shown.output
    metric = invoke(runner, "show", "metric", "toy-brightness")
    assert "higher_is_better = False" in metric.output
    missing = invoke(runner, "show", "attack", "lorra")
    assert missing.exit_code == 2 and "Unknown attack 'lorra'" in missing.output


def test_plugin_commands(temp_plugin):
    class Cmd:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="toy-hello")
            def hello():
                click.echo("hello from a plugin")

    temp_plugin(Cmd(), "cmd-plugin")
    _attach_commands()
    out = CliRunner().invoke(cli, ["toy-hello"])
    assert out.exit_code == 0 and "hello from a plugin" in out.output


def _folder_args(data, model):
    return ["--domain", "folder", "--domain-arg", f"data={data}", "--domain-arg", f"model={model}",
            "--domain-arg", "illegal=class_0", "--domain-arg", "legal=class_1",
            "--domain-arg", "primary_metric=toy-brightness"]


def test_bad_data_and_model_folders_exit_2(runner, tmp_path):
    from advbench.data import export_image_folder
    from advbench.testing import tiny_dataset, tiny_model

    data = tmp_path / "data"
    export_image_folder(tiny_dataset(n_classes=2, n_per_class=6), data)
    model = tmp_path / "model"
    tiny_model().save(model)
    results = tmp_path / "r.jsonl"
    common = ["run", "--results", str(results), "--cache-dir", str(tmp_path / "c"), "--quiet"]

    def check(args, message):
        out = invoke(runner, *common, *args)
        assert out.exit_code == 2 and message in out.output, out.output
        assert len(out.output.strip().splitlines()) == 1 and not results.exists()

    check(_folder_args(tmp_path / "nodata", model), "nodata does not exist")
    check(_folder_args(data, model)[:-2], "primary_metric is required")
    # an image listed in metadata.jsonl that is missing
    first = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    (data / first).rename(tmp_path / "moved.png")
    check(_folder_args(data, model), first)
    (tmp_path / "moved.png").rename(data / first)
    # a truncated UNet weights file
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    check(_folder_args(data, model), "diffusion_pytorch_model.safetensors")
    check(["--domain", "toy", "--model", str(model)], "diffusion_pytorch_model.safetensors")


def test_folder_domain_metric_args():
    from advbench.errors import ParamError
    from advbench.params import build_params
    from advbench_plugins.datasets.folder_domain import FolderDomain

    base = {"data": "d", "model": "m", "illegal": "a", "primary_metric": "openclip-score"}
    params = build_params(FolderDomain.Params, {**base, "metric_args": "openclip-score.checkpoint=c.st,x.k=1"}, "d")
    domain = FolderDomain(params)
    assert domain.metric_params("openclip-score") == {"checkpoint": "c.st"} and domain.metric_params("y") == {}
    assert domain.class_noun("a") == ""
    assert FolderDomain(build_params(FolderDomain.Params, {**base, "noun": "person"}, "d")).class_noun("a") == "person"
    with pytest.raises(ParamError, match="METRIC.KEY=VALUE"):
        build_params(FolderDomain.Params, {**base, "metric_args": "nokey"}, "d")


def test_bench_shards_split_the_grid_and_share_one_results_file(runner, tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(SPEC)
    results = tmp_path / "grid.jsonl"
    common = ["--results", str(results), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--threads", "1"]
    first = invoke(runner, "bench", str(spec), *common, "--shard", "1/2")
    assert first.exit_code == 0, first.output
    assert len(results.read_text().splitlines()) == 3
    # --check before the other shard ran refuses rather than comparing half a grid
    (tmp_path / "x.csv").write_text("domain,defense,attack,threat_model,mitigation_power_mean,legal_impact_mean\n")
    early = invoke(runner, "bench", str(spec), *common, "--shard", "1/2", "--check", str(tmp_path / "x.csv"))
    assert early.exit_code == 2 and "run the other shards first" in early.output
    second = invoke(runner, "bench", str(spec), *common, "--shard", "2/2")
    assert second.exit_code == 0, second.output
    ids = [json.loads(line)["cell_id"] for line in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6
    whole = invoke(runner, "bench", str(spec), *common, "--dry-run")
    assert whole.output.count("done") == 6


@pytest.mark.parametrize("shard", ["2", "0/2", "3/2", "a/b"])
def test_bad_shard_is_one_line_exit_2(runner, tmp_path, shard):
    spec = tmp_path / "grid.toml"
    spec.write_text(SPEC)
    out = invoke(runner, "bench", str(spec), "--results", str(tmp_path / "r.jsonl"), "--shard", shard)
    assert out.exit_code == 2 and "--shard" in out.output
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "r.jsonl").exists()


def test_tables_show_bracketed_labels_verbatim():
    from rich.console import Console

    from advbench.cli.tables import cells_table

    console = Console(width=200, record=True)
    console.print(cells_table([{"defense": "R[p=0.3]", "attack": "fullft[steps=100]", "seed": 0}], "t"))
    text = console.export_text()
    assert "fullft[steps=100]" in text and "R[p=0.3]" in text


@pytest.mark.parametrize("args", [["show", "attack", "fullft"], ["show", "defense", "freezeasguard"], ["list"]])
def test_show_and_list_fit_80_columns_without_cutting(runner, args, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = invoke(runner, *args)
    assert out.exit_code == 0, out.output
    assert "…" not in out.output and max(len(line) for line in out.output.splitlines()) <= 80
    if args[:2] == ["show", "attack"]:
        assert "anytime = True" in out.output  # whether the attack can be scored at several budgets


def test_bench_match_runs_only_the_matching_cells(runner, tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text('''
[[domains]]
name = "toy"
[[defenses]]
name = "none"
[[defenses]]
name = "random"
params = { p = 0.5 }
[[attacks]]
name = "fullft"
params = { steps = 1, batch_size = 2 }
''')
    results = tmp_path / "r.jsonl"
    out = invoke(runner, "bench", str(spec), "--results", str(results), "--match", "random", "--cache-dir",
                 str(tmp_path / "c"), "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["cell"]["defense"]["name"] for line in results.read_text().splitlines()] == ["random"]
    missing = invoke(runner, "bench", str(spec), "--match", "nothing like this", "--dry-run")
    assert missing.exit_code == 2 and "no cell of" in missing.output
