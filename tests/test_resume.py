"""Acceptance: a bench killed with SIGKILL resumes to the same leaderboard; same seed, same results."""

import json
import os
import signal
import time

from advbench.leaderboard import build_leaderboard, to_csv
from advbench.results import ResultStore
from tests.toyworld import RANDOM_DEFENSE, TOY_SPEC, cli_process

SPEC = 'name = "resume"\nseeds = [0, 1]\n' + TOY_SPEC + RANDOM_DEFENSE


def _bench(spec, results, cache, **popen):
    return cli_process(["bench", spec, "--results", results, "--cache-dir", cache, "--device", "cpu"], **popen)


def _leaderboard(results) -> str:
    return to_csv(build_leaderboard(ResultStore(results).records()))


def test_sigkill_mid_bench_then_rerun_matches_uninterrupted(tmp_path):
    spec = tmp_path / "resume.toml"
    spec.write_text(SPEC)
    clean = _bench(spec, tmp_path / "clean.jsonl", tmp_path / "clean-cache")
    assert clean.wait(timeout=600) == 0, clean.stderr.read().decode()[-2000:]

    killed_results = tmp_path / "killed.jsonl"
    proc = _bench(spec, killed_results, tmp_path / "killed-cache", start_new_session=True)
    deadline = time.time() + 600
    # kill once the first cell is recorded and the second cell is under way
    while time.time() < deadline and proc.poll() is None:
        if killed_results.exists() and len(killed_results.read_text().splitlines()) >= 1:
            time.sleep(1.5)
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the bench finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = killed_results.read_text().splitlines()
    assert 1 <= len(lines) < 4
    assert all(json.loads(line)["schema_version"] == 2 for line in lines)  # no truncated record

    rerun = _bench(spec, killed_results, tmp_path / "killed-cache")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()[-2000:]
    records = ResultStore(killed_results).records()
    assert len(records) == 4 and len({r["cell_id"] for r in records}) == 4
    assert _leaderboard(killed_results) == _leaderboard(tmp_path / "clean.jsonl")
