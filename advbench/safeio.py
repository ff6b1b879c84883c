"""Crash- and disk-full-safe file helpers of the results store (:class:`advbench.results.ResultStore`) and of
every generated file (leaderboards, plots).

- :func:`atomic_write`: a temporary file ``.<name>.XXXXXXXX.tmp`` next to the target, fsynced and renamed over
  it, then the folder fsynced; on any failure the temporary file is removed and the target is untouched.
- :func:`stale_temp_files`: those temporary files left by a killed writer (only ever stale under the writer lock).
- :func:`torn_tail`: a last line cut short (a crash, a full disk or a partial copy of a JSON Lines file).
- pending side files: one JSON file per record that could not be appended (:func:`keep_pending`,
  :func:`read_pending`, :func:`drop_pending`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from advbench.errors import space_errno, storage_error

try:  # POSIX; elsewhere writes are still atomic (rename) but not serialized between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` by ``data`` all at once (``mode``: its permissions, default from the umask)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def stale_temp_files(path: Path) -> list[Path]:
    """The temporary files of :func:`atomic_write` for ``path`` and its torn side files that exist now."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}(\.torn-[0-9TZ-]+)?\.[a-z0-9_]{{8}}\.tmp$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_file())


@contextlib.contextmanager
def locked(path: Path, lock_path: Path, pending: list[Path]) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``lock_path`` for writing ``path``; under it the temporary files of writers
    that were killed (next to ``path`` and in the ``pending`` folders) are removed: writers only make them while
    they hold the lock, so any that exist then are stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            for tmp in stale_temp_files(path):
                tmp.unlink(missing_ok=True)
            for folder in pending:
                if folder.is_dir():
                    for tmp in folder.glob(".*.tmp"):
                        tmp.unlink(missing_ok=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@dataclass
class Torn:
    """A JSON Lines file's last non-empty line that is cut short: its number (1-based) and its bytes' offset."""

    number: int
    offset: int
    data: bytes


def torn_tail(data: bytes) -> Torn | None:
    """The last non-empty line of ``data`` when it starts a JSON object (``{``) but is not valid JSON or not
    UTF-8: a record cut short. Any other bad line (also a last one) is for the caller to report."""
    end = len(data.rstrip())
    if not end:
        return None
    start = data.rfind(b"\n", 0, end) + 1
    line = data[start:end]
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Torn(data.count(b"\n", 0, start) + 1, start, data[start:])
    return None


def side_path(path: Path, tag: str) -> Path:
    """A new ``<name>.<tag>-<UTC time>`` next to ``path`` (``-2``, ``-3``… when that exists)."""
    base = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def keep_pending(folders: list[Path], name: str, data: bytes) -> tuple[Path | None, list[str]]:
    """Write ``data`` atomically as ``<folder>/<name>`` into the first folder that takes it: ``(path, [])``, or
    ``(None, why each folder failed)``."""
    problems = []
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / name
            atomic_write(target, data)
            return target, problems
        except OSError as exc:
            problems.append(f"{folder}: {exc.strerror or exc}")
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    return None, problems


def read_pending(folders: list[Path]) -> list[tuple[Path, bytes]]:
    """``(path, content)`` of every ``*.json`` pending file in ``folders``, by name."""
    out = []
    for folder in folders:
        if folder.is_dir():
            for p in sorted(folder.glob("*.json")):
                with contextlib.suppress(FileNotFoundError):
                    out.append((p, p.read_bytes()))
    return out


def drop_pending(files: list[Path]) -> None:
    """Delete merged pending files, then their folders once empty."""
    folders = {p.parent for p in files}
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for folder in folders:
        fsync_dir(folder)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def unwritten(exc: OSError, writing: str, folder: Path, needed: int, fix: str, pending: list[Path],
              item: tuple[str, bytes] | None, n_pending: int = 0) -> BaseException:
    """What to raise when a file could not be written: ``item`` (``(cell_id, record line)``, the unsaved record,
    or None) is first kept in a pending folder. A :class:`~advbench.errors.StorageError` naming where it was kept
    (or that ``n_pending`` pending records stay), or ``exc`` itself for an unexpected error when nothing was kept.
    """
    code = space_errno(exc)
    kept = None
    if item is not None:
        cell, data = item
        path, problems = keep_pending(pending, f"{cell}.json", data + b"\n")
        if path is not None:
            kept = f"the record of cell {cell} was kept in {path}; the next advbench run or bench adds it"
        elif code is not None:
            kept = f"the record of cell {cell} could not be kept either ({'; '.join(problems)}): run that cell again"
    elif n_pending:
        kept = f"{n_pending} pending record(s) stay in their side files until a write succeeds"
    if code is None and kept is None:  # not a storage problem and nothing kept: the original error, with traceback
        return exc
    cause = exc if code is None or exc.errno == code else OSError(code, os.strerror(code))
    return storage_error(cause, writing, folder, needed, fix, kept)
