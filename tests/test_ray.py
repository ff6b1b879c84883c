"""``advbench bench --executor ray``: the same records and leaderboard as the local executor, resume, a killed
worker retried without losing or duplicating a record, and one-line errors before any work.

One local Ray instance (2 CPUs) serves the whole module; the bench command runs in this process as its driver.
The toy plugin and the crashing defense below are registered at run time here and reach the workers through the
executor (by reference to this package, importable there because ``PYTHONPATH`` holds the repository root).
"""

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from advbench.cli.main import _attach_commands, cli
from advbench.errors import DataError
from advbench.hookspecs import hookimpl
from advbench.interfaces import Defense, ProtectedModel
from advbench.params import param

from tests.toyworld import ToyPlugin

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name = "raygrid"
seeds = [0, 1]
[[domains]]
name = "toy"
[[defenses]]
name = "none"
[[defenses]]
name = "random"
params = { p = 0.5 }
[[attacks]]
name = "fullft"
params = { steps = 2, batch_size = 2 }
budgets = [2]
"""


class CrashOnce(Defense):
    """No defense, but the first cell to get here kills its own process (a worker lost mid-cell)."""

    @dataclass(frozen=True)
    class Params:
        marker: str = param("", "file created by the process that kills itself; once it exists, nothing dies")

    def protect(self, model, publisher_data, ctx):
        try:
            fd = os.open(self.params.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return ProtectedModel(model, info={"defense": "crash-once"})
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


class Refuses(Defense):
    """A defense whose protect stage always fails with a user error (bad input found on the worker)."""

    def protect(self, model, publisher_data, ctx):
        raise DataError("this defense refuses every model")


class CrashPlugin:
    @hookimpl
    def register_defenses(self, register):
        register("crash-once", CrashOnce)
        register("refuses", Refuses)


@pytest.fixture(scope="module", autouse=True)
def _restore_environment():
    """Starting Ray sets its token variables in this process's environment; the module leaves none behind."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def ray_instance():
    from advbench.executors import start_ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    started = start_ray(num_cpus=2)
    yield
    if started:
        import ray

        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cache(tmp_path_factory):
    """The stage cache of the module's Ray runs (a cell both tests have is computed once)."""
    return tmp_path_factory.mktemp("ray-cache")


@pytest.fixture
def runner(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")
    temp_plugin(CrashPlugin(), "crash-plugin")
    _attach_commands()
    return CliRunner()


def bench(runner, spec, results, cache, *extra):
    return runner.invoke(cli, ["bench", str(spec), "--results", str(results), "--cache-dir", str(cache),
                               "--device", "cpu", *extra], catch_exceptions=False, env={"COLUMNS": "200"})


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def leaderboard_csv(path):
    from advbench.leaderboard import build_leaderboard, to_csv

    return to_csv(build_leaderboard(records(path)))


def test_ray_grid_gives_the_local_leaderboard_and_resumes(runner, ray_instance, ray_cache, tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID)
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    out = bench(runner, spec, local, tmp_path / "cache-local", "--executor", "local")
    assert out.exit_code == 0, out.output
    assert len(records(local)) == 4
    # resume: the ray run starts from a file that already holds the first cell, with a cache of its own
    first = local.read_text().splitlines(keepends=True)[0]
    distributed.write_text(first)
    out = bench(runner, spec, distributed, ray_cache, "--executor", "ray", "--num-cpus", "1")
    assert out.exit_code == 0, out.output
    assert out.output.count("skipped (done)") == 1 and out.output.count("│ done") == 3, out.output
    got = records(distributed)
    assert distributed.read_text().startswith(first) and len(got) == 4
    assert sorted(r["cell_id"] for r in got) == sorted(r["cell_id"] for r in records(local))
    # the three new cells were computed on Ray workers (a fresh cache), not copied
    assert all(not s["cached"] for r in got[1:] for s in r["stages"])
    assert {r["provenance"]["torch_threads"] for r in got} == {1}
    assert leaderboard_csv(distributed) == leaderboard_csv(local)
    # a second run finds every cell done and submits nothing
    before = distributed.read_bytes()
    again = bench(runner, spec, distributed, ray_cache, "--executor", "ray")
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped (done)") == 4 and distributed.read_bytes() == before


def test_a_worker_killed_mid_cell_is_retried_and_stored_once(runner, ray_instance, ray_cache, tmp_path):
    marker = tmp_path / "killed.pid"
    spec = tmp_path / "crash.toml"
    spec.write_text(GRID.replace('name = "random"\nparams = { p = 0.5 }',
                                 f'name = "crash-once"\nparams = {{ marker = "{marker}" }}')
                    .replace("seeds = [0, 1]", "seeds = [1]"))  # none, seed 1: in the cache of the test above
    results = tmp_path / "crash.jsonl"
    out = bench(runner, spec, results, ray_cache, "--executor", "ray")  # never local: it would kill the driver
    assert out.exit_code == 0, out.output
    killed = int(marker.read_text())
    assert killed != os.getpid()  # a worker died, not the driver
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    got = records(results)
    assert len(got) == 2 and len({r["cell_id"] for r in got}) == 2
    assert {r["cell"]["defense"]["name"] for r in got} == {"none", "crash-once"}
    assert next(r for r in got if r["cell"]["defense"]["name"] == "crash-once")["defense_info"] == {
        "defense": "crash-once"}


def test_a_failing_cell_is_one_line_and_the_others_are_stored(runner, ray_instance, ray_cache, tmp_path):
    spec = tmp_path / "fails.toml"
    spec.write_text(GRID.replace('name = "random"\nparams = { p = 0.5 }', 'name = "refuses"')
                    .replace("seeds = [0, 1]", "seeds = [1]"))
    results = tmp_path / "fails.jsonl"
    out = bench(runner, spec, results, ray_cache, "--executor", "ray")
    assert out.exit_code == 2, out.output
    assert out.output.splitlines()[-1] == ("Error: cell toy | refuses vs fullft(batch_size=2,steps=2) | compliant | "
                                           "seed 1: this defense refuses every model")
    assert [r["cell"]["defense"]["name"] for r in records(results)] == ["none"]


def test_without_ray_the_error_says_how_to_install_it(runner, tmp_path, monkeypatch):
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when Ray is not installed
    out = bench(runner, spec, tmp_path / "r.jsonl", tmp_path / "c", "--executor", "ray")
    assert out.exit_code == 2
    assert out.output.strip() == ('Error: --executor ray needs Ray, which is not installed: '
                                  'pip install "advbench[ray]"')
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("extra, spec_tail, message", [
    (["--num-gpus", "1"], "", "--num-gpus only apply to --executor ray"),
    (["--executor", "ray", "--device", "cuda"], "", "--device cuda on Ray needs a GPU per cell"),
    (["--executor", "ray", "--device", "cuda:1", "--num-gpus", "1"], "", "write --device cuda"),
    (["--executor", "ray", "--num-cpus", "-1"], "", "num_cpus must be a number >= 0"),
    (["--executor", "ray"], "[ray]\nnum_gpu = 1\n", "[ray] has no key 'num_gpu'; allowed: num_cpus, num_gpus"),
    (["--executor", "ray"], "[ray]\nmax_retries = -1\n", "[ray] max_retries must be an integer >= 0"),
])
def test_ray_settings_are_checked_before_any_work(runner, tmp_path, extra, spec_tail, message):
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID + spec_tail)
    out = bench(runner, spec, tmp_path / "r.jsonl", tmp_path / "c", *extra)
    assert out.exit_code == 2 and message in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "r.jsonl").exists()


def test_spec_resources_and_flags():
    from advbench.executors import RayConfig, RayExecutor

    assert RayExecutor(RayConfig(num_gpus=0.5)).device("auto") == "cuda"  # the worker's GPU, not the driver's
    assert RayExecutor(RayConfig()).device("auto") == "cpu"
