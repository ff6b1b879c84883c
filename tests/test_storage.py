"""Storage faults keep finished work: stale build folders, full disks and file-size limits, torn results lines,
pending records, and the `advbench cache info/prune` commands."""

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from advbench import cache as cache_mod
from advbench import safeio
from advbench.cache import StageCache
from advbench.errors import DataError, StorageError
from advbench.results import ResultStore, ResultsWarning

from tests.test_results import make_record

ROOT = Path(__file__).resolve().parents[1]
KEY = "ab" * 32
try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None
needs_rlimit = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"),
                                  reason="a real file-size limit needs resource.setrlimit(RLIMIT_FSIZE)")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder: Path, name: str, owner=None, age_hours: float = 0.0) -> Path:
    path = folder / name
    path.mkdir(parents=True)
    (path / "partial.bin").write_bytes(b"x" * 1000)
    if owner is not None:
        (path / ".owner").write_text(json.dumps(owner))
    then = time.time() - age_hours * 3600
    for p in (path / "partial.bin", path / ".owner", path):
        if p.exists():
            os.utime(p, (then, then))
    return path


def _run(script: str, *args, limit: int | None = None, stdin: str | None = None):
    """Run ``script`` in a fresh Python, under ``ulimit -f`` = ``limit`` bytes when given."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n" if limit else ""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + script, *map(str, args)], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def _failing_writes(monkeypatch, path: Path, code: int):
    """Writing ``path`` (not other files) fails with ``code``; returns the real writer."""
    real = safeio.atomic_write

    def write(target, data, mode=None):
        if target == path:
            raise OSError(code, os.strerror(code))
        return real(target, data, mode)

    monkeypatch.setattr(safeio, "atomic_write", write)
    return real


# ----------------------------------------------------------------------------------------- stage cache
def test_next_build_removes_stale_temp_folders_and_keeps_live_ones(tmp_path):
    stage = tmp_path / "c" / "protect"
    here = socket.gethostname()
    dead = _temp(stage, ".dead00000000-a", {"pid": _dead_pid(), "hostname": here, "started": time.time()})
    live = _temp(stage, ".live00000000-b", {"pid": os.getpid(), "hostname": here, "started": time.time()},
                 age_hours=30)
    orphan_old = _temp(stage, ".orph00000000-c", age_hours=7)
    orphan_new = _temp(stage, ".orph00000000-d", age_hours=1)
    remote_old = _temp(stage, ".remo00000000-e", {"pid": 1, "hostname": here + "-other", "started": 0}, age_hours=7)
    remote_new = _temp(stage, ".remo00000000-f", {"pid": 1, "hostname": here + "-other", "started": 0}, age_hours=1)
    seen = {}

    def build(folder):
        seen["owner"] = json.loads((folder / ".owner").read_text())
        (folder / "out.txt").write_text("done")

    folder, cached = StageCache(tmp_path / "c").get_or_build("protect", KEY, build)
    assert not cached and (folder / "out.txt").read_text() == "done" and (folder / ".complete").exists()
    assert not (folder / ".owner").exists()  # the owner file is only in the build folder
    assert seen["owner"]["pid"] == os.getpid() and seen["owner"]["hostname"] == here
    assert {p.name for p in stage.iterdir() if p.name.startswith(".")} == {live.name, orphan_new.name,
                                                                         remote_new.name}
    assert not dead.exists() and not orphan_old.exists() and not remote_old.exists()


def test_a_final_folder_without_complete_is_rebuilt(tmp_path):
    cache = StageCache(tmp_path / "c")
    half = cache.path("score", KEY)
    half.mkdir(parents=True)
    (half / "old.txt").write_text("half")
    folder, cached = cache.get_or_build("score", KEY, lambda f: (f / "new.txt").write_text("whole"))
    assert not cached and sorted(p.name for p in folder.iterdir()) == [".complete", "new.txt"]


def test_a_stage_another_process_finished_meanwhile_is_kept_not_replaced(tmp_path):
    # two shards build the same stage at once: the one that finishes second must not remove the first one's
    # folder, which that shard may be reading (CI's regression bench once failed on exactly that)
    cache = StageCache(tmp_path / "c")
    theirs = {}

    def build(folder):
        (folder / "scores.json").write_text("ours")
        theirs["folder"], _ = StageCache(tmp_path / "c").get_or_build(
            "score", KEY, lambda f: (f / "scores.json").write_text("theirs"))
        theirs["inode"] = theirs["folder"].stat().st_ino

    folder, cached = cache.get_or_build("score", KEY, build)
    assert not cached and folder == theirs["folder"] and folder.stat().st_ino == theirs["inode"]
    assert (folder / "scores.json").read_text() == "theirs"
    assert [p.name for p in folder.parent.iterdir()] == [KEY]  # our build folder is gone


def test_a_disabled_cache_replaces_a_finished_entry(tmp_path):
    StageCache(tmp_path / "c").get_or_build("score", KEY, lambda f: (f / "s.json").write_text("old"))
    folder, cached = StageCache(tmp_path / "c", enabled=False).get_or_build(
        "score", KEY, lambda f: (f / "s.json").write_text("new"))
    assert not cached and (folder / "s.json").read_text() == "new"
    assert [p.name for p in folder.parent.iterdir()] == [KEY]


def test_discard_removes_the_named_entries_only_and_measures_them(tmp_path):
    cache = StageCache(tmp_path / "c")
    other = "cd" * 32
    for key in (KEY, other):
        cache.get_or_build("adapt", key, lambda f: (f / "w.bin").write_bytes(b"x" * 1000))
    removed = cache.discard("adapt", [KEY, "ef" * 32], "a loser")  # a key never built is no error
    assert [(r.path.name, r.bytes >= 1000, r.why) for r in removed] == [(KEY, True, "a loser")]
    assert not cache.has("adapt", KEY) and cache.has("adapt", other)
    assert [p.name for p in (tmp_path / "c" / "adapt").iterdir()] == [other]  # no renamed leftovers


@pytest.mark.parametrize("failure, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on device"),  # what safetensors raises
])
def test_disk_full_while_building_leaves_nothing_and_names_the_stage(tmp_path, failure, reason):
    cache = StageCache(tmp_path / "c")

    def build(folder):
        (folder / "weights.bin").write_bytes(b"\0" * 2_500_000)
        raise failure

    with pytest.raises(StorageError) as info:
        cache.get_or_build("protect", KEY, build)
    message = str(info.value)
    assert message.startswith(f"{reason} while writing stage protect/{KEY[:12]} under {tmp_path / 'c'} ")
    assert "needed at least 2.5 MB; " in message and " MB free there" in message and "\n" not in message
    assert message.endswith("free space or point --cache-dir / ADVBENCH_CACHE at a bigger disk")
    assert list((tmp_path / "c" / "protect").iterdir()) == []  # no temporary, no final folder


def test_other_build_errors_keep_their_type_and_leave_nothing(tmp_path):
    def build(folder):
        (folder / "x").write_text("x")
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        StageCache(tmp_path / "c").get_or_build("protect", KEY, build)
    assert list((tmp_path / "c" / "protect").iterdir()) == []


@pytest.mark.skipif(cache_mod._process_start(os.getpid()) is None, reason="process start times need Linux /proc")
def test_stale_rule_sees_a_reused_process_number(tmp_path):
    # the owner started a day before this process did: the number was reused, so the age decides
    reused = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": time.time() - 86400}
    fresh, old = _temp(tmp_path, ".reused-a", reused), _temp(tmp_path, ".reused-b", reused, age_hours=7)
    assert cache_mod.temp_folder_state(fresh)[0] is False
    assert cache_mod.temp_folder_state(old) == (True, f"process {os.getpid()} started after the build did (its "
                                                      "number was reused?), untouched for 7.0 h")


def test_a_running_build_touches_its_owner_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "HEARTBEAT_SECONDS", 0.05)
    ages = []

    def build(folder):
        old = time.time() - 7 * 3600
        os.utime(folder / ".owner", (old, old))
        time.sleep(0.5)
        ages.append(time.time() - (folder / ".owner").stat().st_mtime)

    StageCache(tmp_path / "c").get_or_build("adapt", KEY, build)
    assert ages[0] < 60  # other hosts see the build as alive


def test_a_nested_stage_that_fills_the_disk_reports_itself(tmp_path):
    cache = StageCache(tmp_path / "c")

    def inner(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    def outer(folder):  # an anytime attack saves its intermediate budgets from inside the final budget's build
        cache.get_or_build("adapt", "ef" * 32, inner)

    with pytest.raises(StorageError, match=r"^no space left on device while writing stage adapt/efefefefefef "):
        cache.get_or_build("adapt", KEY, outer)
    assert list((tmp_path / "c" / "adapt").iterdir()) == []


STAGE_CLI = """
import sys, click
from advbench.cache import StageCache
from advbench.cli.main import cli
@cli.command()
@click.argument("root")
def fill(root):
    StageCache(root).get_or_build("protect", "cd" * 32, lambda f: (f / "big.bin").write_bytes(b"x" * 300_000))
    print("built")
cli(["fill", sys.argv[1]], prog_name="advbench")
"""


@needs_rlimit
def test_file_size_limit_while_building_is_one_line_exit_2_and_leaves_no_stage(tmp_path):
    out = _run(STAGE_CLI, tmp_path / "c", limit=100_000)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"Error: file size limit (ulimit -f) reached while writing stage protect/cdcdcdcdcdcd "
                                 f"under {tmp_path / 'c'} (a file there needs more than 0.1 MB): raise the file size "
                                 "limit (ulimit -f unlimited)"), out.stderr
    assert list((tmp_path / "c" / "protect").iterdir()) == []
    again = _run(STAGE_CLI, tmp_path / "c")  # without the limit the same stage builds
    assert again.returncode == 0 and again.stdout.strip() == "built", again.stderr
    assert (tmp_path / "c" / "protect" / ("cd" * 32) / "big.bin").stat().st_size == 300_000


@pytest.mark.slow
@needs_rlimit
def test_file_size_limit_during_a_real_run_is_one_line_exit_2(tmp_path):
    script = """
import sys
from advbench import plugins
from tests.toyworld import ToyPlugin
plugins.register_plugin(ToyPlugin(), "toy-plugin")
from advbench.cli.main import _attach_commands, cli
_attach_commands()
cli(["run", "--domain", "toy", "--attack-arg", "steps=2", "--attack-arg", "batch_size=2", "--no-baseline", "--quiet",
     "--device", "cpu", "--results", sys.argv[1], "--cache-dir", sys.argv[2]], prog_name="advbench")
"""
    out = _run(script, tmp_path / "r.jsonl", tmp_path / "c", limit=100_000)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "file size limit (ulimit -f) reached while writing stage protect/" in out.stderr
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == [] and not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------------------------------- results file
def _big(seed, size):
    rec = make_record(seed=seed)
    rec["defense_info"] = {"blob": "x" * size}
    return rec


APPEND = """
import json, sys
from advbench.errors import StorageError
from advbench.results import ResultStore
try:
    ResultStore(sys.argv[1]).append(json.loads(sys.stdin.read()))
except StorageError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


@needs_rlimit
def test_append_over_the_file_size_limit_keeps_the_record_and_the_next_write_merges_it(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append(_big(0, 150_000))
    before = path.read_bytes()
    new = _big(1, 60_000)
    out = _run(APPEND, path, limit=200_000, stdin=json.dumps(new))
    pending = path.with_name("r.jsonl.pending") / f"{new['cell_id']}.json"
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        f"file size limit (ulimit -f) reached while writing results file {path} (a file there needs more than 0.2 MB);"
        f" the record of cell {new['cell_id']} was kept in {pending}; the next advbench run or bench adds it: raise"
        " the file size limit (ulimit -f unlimited)")
    assert path.read_bytes() == before and json.loads(pending.read_text()) == new
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # pending counts as finished: a rerun does not train the cell again
    assert store.records() == [_big(0, 150_000), new] and store.has(new["cell_id"])
    # the next write (without the limit) merges it once and deletes the side file
    assert store.append(new) is False
    assert [r["cell"]["seed"] for r in store.records()] == [0, 1]
    assert len(path.read_text().splitlines()) == 2 and not pending.parent.exists()
    assert store.flush_pending() == 0


def test_flush_pending_merges_from_the_fallback_folder_and_skips_stored_cells(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append(make_record(seed=0))
    path.with_name("r.jsonl.pending").write_text("in the way")  # the pending folder cannot be made
    real = _failing_writes(monkeypatch, path, errno.ENOSPC)
    with pytest.raises(StorageError, match=r"^no space left on device while writing results file .*; the record of "
                                           r"cell \w+ was kept in .*advbench-pending.*: free space there"):
        store.append(make_record(seed=1))
    [kept] = (tmp_path / "tmp" / "advbench-pending").rglob("*.json")
    monkeypatch.setattr(safeio, "atomic_write", real)
    stored = kept.with_name(make_record(seed=0)["cell_id"] + ".json")  # e.g. merged before a crash, not yet deleted
    stored.write_text(json.dumps(make_record(seed=0)))
    assert store.finished_ids() == {make_record(seed=0)["cell_id"], make_record(seed=1)["cell_id"]}
    assert store.flush_pending() == 1 and not kept.exists() and not stored.exists() and store.flush_pending() == 0
    assert [json.loads(line)["cell"]["seed"] for line in path.read_text().splitlines()] == [0, 1]


def test_unexpected_write_error_keeps_the_record_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    _failing_writes(monkeypatch, path, errno.EIO)
    with pytest.raises(StorageError, match=r"^could not write \(Input/output error\) while writing results file"):
        ResultStore(path).append(make_record(seed=3))
    monkeypatch.undo()
    assert ResultStore(path).flush_pending() == 1 and [r["cell"]["seed"] for r in ResultStore(path).records()] == [3]


def _torn(path, cut_utf8=False):
    first = json.dumps(make_record(seed=0))
    second = json.dumps(make_record(seed=1, defense_label="défense"), ensure_ascii=False).encode()
    tail = second[:second.index("é".encode()) + 1] if cut_utf8 else second[:len(second) // 2]
    path.write_bytes(first.encode() + b"\n" + tail)
    return tail


@pytest.mark.parametrize("cut_utf8", [False, True])
def test_torn_last_line_is_read_around_then_moved_aside_by_the_next_append(tmp_path, cut_utf8):
    path = tmp_path / "r.jsonl"
    tail = _torn(path, cut_utf8)
    store = ResultStore(path)
    with pytest.warns(ResultsWarning, match=rf"results file {path} line 2 is cut short .* side file r\.jsonl\.torn-"):
        assert [r["cell"]["seed"] for r in store.records()] == [0]
    with pytest.warns(ResultsWarning, match="moved it to"):
        assert store.append(make_record(seed=2)) is True
    [side] = tmp_path.glob("r.jsonl.torn-*")
    assert side.read_bytes() == tail
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file is whole again: no warning
        assert [r["cell"]["seed"] for r in store.records()] == [0, 2]


@pytest.mark.parametrize("lines, message", [
    (['{"schema_version": 2, "cell_id": "x', "RECORD"], "line 1 is not a JSON object: Unterminated string"),
    (["RECORD", '{"schema_version": 2}'], "line 2 is not an advbench result record"),
])
def test_a_broken_middle_line_or_a_whole_invalid_last_line_still_raise(tmp_path, lines, message):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(make_record()) if line == "RECORD" else line for line in lines) + "\n")
    with pytest.raises(DataError, match=message):
        ResultStore(path).records()
    with pytest.raises(DataError):
        ResultStore(path).append(make_record(seed=4))
    assert list(tmp_path.glob("r.jsonl.torn-*")) == []


def test_stale_temp_files_of_killed_appends_are_removed_under_the_lock(tmp_path):
    path = tmp_path / "r.jsonl"
    stale = tmp_path / ".r.jsonl.k3x_9abc.tmp"
    stale.write_text("half")
    other = tmp_path / ".r.jsonl.x.k3x_9abc.tmp"  # another results file's (r.jsonl.x) temp file
    other.write_text("theirs")
    ResultStore(path).append(make_record(seed=0))
    assert not stale.exists() and other.exists()


# -------------------------------------------------------------------------------------- advbench cache
def _cli(*args):
    from advbench.cli.main import _attach_commands, cli

    _attach_commands()
    return CliRunner().invoke(cli, ["cache", *map(str, args)], catch_exceptions=False)


def _cache_with_entries(root: Path) -> StageCache:
    cache = StageCache(root)
    for i, size in enumerate((1_500_000, 500_000)):
        cache.get_or_build("adapt", f"{i:064x}", lambda f, size=size: (f / "w.bin").write_bytes(b"x" * size))
    cache.get_or_build("score", KEY, lambda f: (f / "s.json").write_text("{}"))
    old = time.time() - 10 * 86400
    os.utime(cache.path("adapt", f"{0:064x}") / ".complete", (old, old))
    here = socket.gethostname()
    _temp(root / "adapt", ".dead00000000-a", {"pid": _dead_pid(), "hostname": here, "started": 0})
    _temp(root / "adapt", ".live00000000-b", {"pid": os.getpid(), "hostname": here, "started": time.time()})
    (root / "dreambooth-class-images" / "k").mkdir(parents=True)  # a plugin's own cache (no .complete)
    (root / "dreambooth-class-images" / "k" / "images.npy").write_bytes(b"0" * 100)
    return cache


def test_cache_info_shows_entries_and_sizes_per_stage(tmp_path):
    _cache_with_entries(tmp_path / "c")
    out = _cli("info", "--cache-dir", tmp_path / "c")
    assert out.exit_code == 0, out.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:6]]
            for line in out.output.splitlines() if line.startswith("│")}
    # adapt: two entries (1.5 + 0.5 MB); two build folders of 1 kB + owner file, one of them stale (dead process)
    assert rows["adapt"][:2] == ["2", "2.0 MB"] and re.fullmatch(r"2 \(2\.\d kB\)", rows["adapt"][2])
    assert rows["adapt"][3] == "1"
    assert rows["score"] == ["1", "7 B", "0", "0"]  # s.json and .complete ("score")
    assert rows["dreambooth-class-images *"] == ["1", "100 B", "0", "0"]
    assert rows["total"] == ["4", "2.0 MB", rows["adapt"][2], "1"]
    assert "entries last built or used 0s to 10d ago" in out.output
    assert _cli("info", "--cache-dir", tmp_path / "none").output.strip() == \
        f"cache {tmp_path / 'none'} is empty (the folder does not exist)"


def test_cache_prune_dry_run_then_stale_folders_then_old_entries(tmp_path):
    root = tmp_path / "c"
    cache = _cache_with_entries(root)
    everything = sorted(p for p in root.rglob("*"))
    dry = _cli("prune", "--cache-dir", root, "--older-than", "7d", "--dry-run")
    assert dry.exit_code == 0 and "would remove 2 folder(s)" in dry.output, dry.output
    assert sorted(p for p in root.rglob("*")) == everything
    plain = _cli("prune", "--cache-dir", root)  # no filter: only the stale temporary folder
    assert plain.exit_code == 0 and re.search(r"removed 1 folder\(s\), 1\.\d kB", plain.output), plain.output
    assert not (root / "adapt" / ".dead00000000-a").exists() and (root / "adapt" / ".live00000000-b").exists()
    aged = _cli("prune", "--cache-dir", root, "--older-than", "7d")
    assert aged.exit_code == 0 and "removed 1 folder(s), 1.5 MB" in aged.output, aged.output
    assert not cache.has("adapt", f"{0:064x}") and cache.has("adapt", f"{1:064x}") and cache.has("score", KEY)
    assert (root / "adapt" / ".live00000000-b").exists() and (root / "dreambooth-class-images" / "k").exists()
    stage = _cli("prune", "--cache-dir", root, "--stage", "score")
    assert "removed 1 folder(s)" in stage.output and not cache.has("score", KEY) and cache.has("adapt", f"{1:064x}")


def test_a_cache_hit_refreshes_the_age_prune_reads(tmp_path):
    cache = StageCache(tmp_path / "c")
    folder, _ = cache.get_or_build("score", KEY, lambda f: (f / "s.json").write_text("{}"))
    old = time.time() - 10 * 86400
    os.utime(folder / ".complete", (old, old))
    assert cache.get_or_build("score", KEY, lambda f: None) == (folder, True)
    assert cache.prune(older_than_seconds=86400) == [] and cache.has("score", KEY)


@pytest.mark.parametrize("args, message", [
    (["prune", "--older-than", "7x"], "Error: --older-than '7x' is not an age; use a number and a unit"),
    (["prune", "--older-than", "-1d"], "Error: --older-than '-1d' is not an age"),
    (["prune", "--stage", "adaptt"], "Error: no stage 'adaptt' under cache"),
    (["info"], "is a file, not a folder; pass the stage cache folder with --cache-dir"),
])
def test_cache_command_errors_are_one_line_exit_2(tmp_path, args, message):
    root = tmp_path / "c"
    if args == ["info"]:
        root.write_text("not a folder")
    else:
        _cache_with_entries(root)
    out = _cli(*args, "--cache-dir", root)
    assert out.exit_code == 2 and message in out.output and len(out.output.strip().splitlines()) == 1, out.output
