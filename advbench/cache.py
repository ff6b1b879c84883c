"""Content-hash stage cache.

Every stage of a cell (protect, adapt, generate, score) writes its output into a folder named by a hash of
everything its output depends on. A stage is built in a temporary sibling folder ``<root>/<stage>/.<key12>-XXXX``
and renamed into place only when it finished (with a ``.complete`` marker inside), so a killed run never leaves a
half-built entry and the next run rebuilds it; a final folder without ``.complete`` is rebuilt too. When two
processes (shards) build the same stage at once, the first to finish wins and the other drops its copy: a
finished entry is never replaced while someone may be reading it (only a disabled cache rebuilds one).

A temporary folder holds an ``.owner`` file (pid, hostname, start time), touched every few minutes while its
build runs. Before building, the stale temporary folders of that stage are removed: those of a dead process on
this host, and those without an owner file or from another host untouched for :data:`STALE_AFTER_SECONDS`. A
disk that fills up (or a quota, or ``ulimit -f``) while a stage is built removes the half-built stage and raises
one :class:`~advbench.errors.StorageError` naming the stage, the space it needed and the space free.
``advbench cache info`` / ``prune`` use :meth:`StageCache.info` and :meth:`StageCache.prune`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from advbench.errors import StorageError, UserError, file_size_limit, free_bytes, space_errno, storage_error

CACHE_ENV = "ADVBENCH_CACHE"
DEFAULT_DIR = ".advbench_cache"
COMPLETE = ".complete"
OWNER = ".owner"
# A temporary folder whose builder cannot be checked (no owner file, or built on another host) is stale once
# neither it nor its owner file changed for this long; builders touch their owner file every HEARTBEAT_SECONDS.
STALE_AFTER_SECONDS = 6 * 3600
HEARTBEAT_SECONDS = 600
CACHE_FIX = "free space or point --cache-dir / ADVBENCH_CACHE at a bigger disk"


def canonical_json(obj: Any) -> str:
    """The one canonical JSON form hashed everywhere: sorted keys, no whitespace, no NaN/inf, other objects as str."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def stable_hash(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``obj``: stage keys, cell ids and config hashes."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in chunks: the fingerprint of a weights file. Remembered per path,
    mtime and size, so a checkpoint of hundreds of MB is hashed once per process unless it changes."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_DIR)


def folder_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (0 when it is gone)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _process_start(pid: int) -> float | None:
    """Unix start time of ``pid`` from Linux's /proc (None elsewhere)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def temp_folder_state(folder: Path, now: float | None = None) -> tuple[bool, str]:
    """``(stale, why)`` for a temporary build folder: stale when its owner process on this host is dead, or when
    its builder cannot be checked (no readable owner file, another host, a process number since reused) and
    neither the folder nor its owner file (touched every :data:`HEARTBEAT_SECONDS` by a live build) changed for
    :data:`STALE_AFTER_SECONDS`. A live process's folder is never stale."""
    now = time.time() if now is None else now
    owner = None
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((folder / OWNER).read_text())
    owner = owner if isinstance(owner, dict) else {}
    pid, host, started = owner.get("pid"), owner.get("hostname"), owner.get("started")
    who = "no owner file"
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        who = f"built on host {host}"
        if host == socket.gethostname():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True, f"its process {pid} is gone"
            except OSError:  # EPERM: alive, another user's
                pass
            begun = _process_start(pid)
            if begun is None or not isinstance(started, (int, float)) or begun <= started + 2:
                return False, f"being built by process {pid}"
            who = f"process {pid} started after the build did (its number was reused?)"
    touched = max(t for t in (_mtime(folder), _mtime(folder / OWNER), 0.0) if t is not None)
    hours = (now - touched) / 3600
    if now - touched > STALE_AFTER_SECONDS:
        return True, f"{who}, untouched for {hours:.1f} h"
    return False, f"{who}, touched {hours:.1f} h ago"


class _Heartbeat:
    """Touches a build's owner file every :data:`HEARTBEAT_SECONDS` so other hosts see the build is alive."""

    def __init__(self, path: Path):
        self.path, self.done = path, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"advbench-heartbeat-{path.parent.name}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


@dataclass
class StageStats:
    """What one folder under the cache root holds (sizes in bytes, times as unix mtimes)."""

    stage: str
    managed: bool  # built by StageCache; False: a plugin's own cache folder (prune touches it only by name)
    entries: int = 0
    bytes: int = 0
    incomplete: int = 0  # final folders without .complete (rebuilt when needed)
    incomplete_bytes: int = 0
    temp: int = 0  # temporary build folders, live or stale
    temp_bytes: int = 0
    stale: int = 0  # temporary folders that prune (or the next build of the stage) removes
    oldest: float | None = None  # .complete mtime: when an entry was last built or used
    newest: float | None = None


@dataclass
class Removed:
    """A folder :meth:`StageCache.prune` removed (or would remove, in a dry run), with why."""

    path: Path
    bytes: int
    why: str


class StageCache:
    """Folders ``<root>/<stage>/<key>/`` holding finished stage outputs."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        return self.enabled and (self.path(stage, key) / COMPLETE).exists()

    def get_or_build(self, stage: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return ``(folder, cached)``; ``build(tmp_folder)`` writes the stage's output when it is missing.

        A full disk, quota or file-size limit while building raises :class:`~advbench.errors.StorageError` and
        leaves neither a temporary nor a final folder.
        """
        final = self.path(stage, key)
        if self.has(stage, key):
            with contextlib.suppress(OSError):  # the age `advbench cache prune --older-than` reads: last use
                os.utime(final / COMPLETE)
            return final, True
        tmp: Path | None = None
        beat: _Heartbeat | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._remove(self._stale_temps(final.parent))
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
            owner = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": time.time()}
            (tmp / OWNER).write_text(json.dumps(owner))
            beat = _Heartbeat(tmp / OWNER)
            build(tmp)
            beat.stop()
            (tmp / OWNER).unlink()
            (tmp / COMPLETE).write_text(stage)
            if self.enabled and (final / COMPLETE).exists():
                # another process (a second shard) finished the same stage meanwhile: keep theirs, since it may
                # be reading the folder right now, and drop ours (the `finally` below)
                return final, False
            if final.exists():  # an incomplete entry, or a finished one a disabled cache rebuilds
                self._remove([Removed(final, 0, "replaced")])
            try:
                os.replace(tmp, final)
            except OSError as exc:  # another process put the same stage in place meanwhile: keep theirs
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and (final / COMPLETE).exists():
                    return final, False
                raise
        except Exception as exc:
            code = None if isinstance(exc, StorageError) else self._space_errno(exc, tmp)  # a nested stage's: as is
            if code is None:
                raise
            needed = folder_bytes(tmp) if tmp is not None else 0
            if beat is not None:
                beat.stop()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            cause = exc if isinstance(exc, OSError) and exc.errno == code else OSError(code, os.strerror(code))
            raise storage_error(cause, f"writing stage {stage}/{key[:12]} under {self.root}", self.root, needed,
                                CACHE_FIX) from exc
        finally:
            if beat is not None:
                beat.stop()
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, False

    @staticmethod
    def _space_errno(exc: BaseException, tmp: Path | None) -> int | None:
        """The storage errno behind a failed build, also when a library hid it (torch.save: "file write failed"):
        a file at the ``ulimit -f`` size, or less than 1 MiB free where the stage was written."""
        code = space_errno(exc)
        if code is not None or tmp is None or not tmp.exists():
            return code
        limit = file_size_limit()
        if limit is not None:
            with contextlib.suppress(OSError):
                if any(os.lstat(os.path.join(d, f)).st_size >= limit for d, _, files in os.walk(tmp) for f in files):
                    return errno.EFBIG
        free = free_bytes(tmp)
        return errno.ENOSPC if free is not None and free < 2 ** 20 else None

    # ------------------------------------------------------------------------------------ maintenance
    def _folders(self) -> list[Path]:
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise UserError(f"cache path {self.root} is a file, not a folder; pass the stage cache folder with "
                            "--cache-dir (or ADVBENCH_CACHE)")
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    @staticmethod
    def _managed(folder: Path) -> bool:
        """Whether ``folder`` is a StageCache stage: an entry with .complete, an owned build folder, or empty."""
        dirs = [p for p in folder.iterdir() if p.is_dir()]
        return not dirs or any((p / COMPLETE).exists() or (p.name.startswith(".") and (p / OWNER).exists())
                               for p in dirs)

    @staticmethod
    def _stale_temps(folder: Path, now: float | None = None) -> list[Removed]:
        out = []
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name.startswith("."):
                stale, why = temp_folder_state(p, now)
                if stale:
                    out.append(Removed(p, 0, f"stale temporary folder ({why})"))
        return out

    @staticmethod
    def _remove(items: Iterable[Removed], dry_run: bool = False) -> list[Removed]:
        """Measure and remove; an entry is first renamed to a temporary name, so readers never see half of it."""
        done = []
        for item in items:
            item.bytes = folder_bytes(item.path)
            if not dry_run:
                victim = item.path
                if not item.path.name.startswith("."):
                    victim = item.path.with_name(f".{item.path.name[:12]}-prune-{os.getpid()}-{time.time_ns()}")
                    try:
                        os.rename(item.path, victim)
                    except FileNotFoundError:  # removed by someone else meanwhile
                        continue
                shutil.rmtree(victim, ignore_errors=True)
            done.append(item)
        return done

    def discard(self, stage: str, keys: Iterable[str], why: str = "discarded") -> list[Removed]:
        """Remove these complete entries of ``stage`` (those that exist), renamed away first like :meth:`prune`
        does; what was removed, with its size. The caller knows nothing will read them again."""
        found = [Removed(self.path(stage, key), 0, why) for key in sorted(set(keys)) if self.path(stage, key).is_dir()]
        return self._remove(found)

    def info(self) -> list[StageStats]:
        """One :class:`StageStats` per folder under the root (none when the root does not exist)."""
        now = time.time()
        stats = []
        for folder in self._folders():
            st = StageStats(folder.name, self._managed(folder))
            for p in folder.iterdir():
                if not p.is_dir():
                    continue
                size = folder_bytes(p)
                if p.name.startswith("."):
                    st.temp, st.temp_bytes = st.temp + 1, st.temp_bytes + size
                    st.stale += temp_folder_state(p, now)[0]
                elif st.managed and not (p / COMPLETE).exists():
                    st.incomplete, st.incomplete_bytes = st.incomplete + 1, st.incomplete_bytes + size
                else:
                    st.entries, st.bytes = st.entries + 1, st.bytes + size
                    when = _mtime(p / COMPLETE) if st.managed else _mtime(p)
                    if when is not None:
                        st.oldest = when if st.oldest is None else min(st.oldest, when)
                        st.newest = when if st.newest is None else max(st.newest, when)
            stats.append(st)
        return stats

    def prune(self, stages: Iterable[str] | None = None, older_than_seconds: float | None = None,
              dry_run: bool = False) -> list[Removed]:
        """Remove stale temporary folders and incomplete entries of every stage, and the complete entries of
        ``stages`` (all stages when None) last built or used more than ``older_than_seconds`` ago (any age when
        None); with neither filter, complete entries stay. A plugin's own cache folder (see
        :attr:`StageStats.managed`) is touched only when named in ``stages``. Temporary folders of live builds
        are never removed. Returns what was removed (or would be, with ``dry_run``)."""
        folders = self._folders()
        names = [f.name for f in folders]
        chosen = list(stages) if stages is not None else None
        unknown = sorted(set(chosen or []) - set(names))
        if unknown:
            raise UserError(f"no stage {', '.join(map(repr, unknown))} under cache {self.root}; stages there: "
                            f"{', '.join(names) or 'none'} (see `advbench cache info`)")
        entries_too = chosen is not None or older_than_seconds is not None
        now = time.time()
        removed: list[Removed] = []
        for folder in folders:
            named = chosen is not None and folder.name in chosen
            managed = self._managed(folder)
            if not managed and not named:
                continue
            todo = self._stale_temps(folder, now)
            for p in sorted(folder.iterdir()):
                if not p.is_dir() or p.name.startswith("."):
                    continue
                if managed and not (p / COMPLETE).exists():
                    todo.append(Removed(p, 0, "incomplete entry"))
                elif entries_too and (chosen is None or named):
                    when = _mtime(p / COMPLETE) if managed else _mtime(p)
                    age = now - (when if when is not None else now)
                    if older_than_seconds is None or age > older_than_seconds:
                        ago = f"{age / 86400:.1f} days" if age >= 2 * 86400 else f"{age / 3600:.1f} h"
                        todo.append(Removed(p, 0, f"entry last built or used {ago} ago"))
            removed += self._remove(todo, dry_run)
        return removed
