"""Crash consistency: a 2-cell bench SIGKILLed at seeded random moments, then rerun, ends exactly like an
uninterrupted run: the same leaderboard bytes, no duplicated record, no temporary file or folder left behind."""

import json
import os
import random
import signal
import time
from pathlib import Path

from advbench.leaderboard import build_leaderboard, to_csv
from advbench.results import ResultStore
from tests.toyworld import RANDOM_DEFENSE, TOY_SPEC, cli_process

SPEC = 'name = "crash"\n' + TOY_SPEC + RANDOM_DEFENSE
KILLS = 5


def _bench(spec: Path, folder: Path, **popen):
    return cli_process(["bench", spec, "--results", folder / "results.jsonl", "--cache-dir", folder / "cache",
                        "--device", "cpu"], **popen)


def _finish(proc) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def _leftovers(folder: Path) -> list[str]:
    """Temporary stage folders, temporary results files and pending/torn side files."""
    found = [p for p in (folder / "cache").glob("*/.*") if p.is_dir()]
    found += [p for p in folder.glob(".*.tmp")] + [p for p in folder.glob("results.jsonl.*") if p.suffix != ".lock"]
    return sorted(str(p.relative_to(folder)) for p in found)


def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path):
    spec = tmp_path / "crash.toml"
    spec.write_text(SPEC)
    clean = tmp_path / "clean"
    t0 = time.monotonic()
    _finish(_bench(spec, clean))
    duration = time.monotonic() - t0
    expected = to_csv(build_leaderboard(ResultStore(clean / "results.jsonl").records()))

    rng = random.Random(17)
    moments = sorted(rng.uniform(0.1, 0.95) * duration for _ in range(KILLS))
    killed_before_end = 0
    for i, moment in enumerate(moments):
        folder = tmp_path / f"kill{i}"
        proc = _bench(spec, folder, start_new_session=True)
        time.sleep(moment)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_before_end += 1
        proc.communicate()
        results = folder / "results.jsonl"
        if results.exists():  # whatever a kill left is whole records only
            assert all(json.loads(line)["schema_version"] == 2 for line in results.read_text().splitlines())
        _finish(_bench(spec, folder))
        records = ResultStore(results).records()
        assert len(records) == 2 and len({r["cell_id"] for r in records}) == 2, f"kill at {moment:.1f}s"
        assert to_csv(build_leaderboard(records)) == expected, f"kill at {moment:.1f}s"
        assert _leftovers(folder) == [], f"kill at {moment:.1f}s left {_leftovers(folder)}"
    assert killed_before_end >= KILLS - 1  # the moments fall inside the run, so (nearly) every one is a real kill
