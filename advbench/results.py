"""The results store: one JSON record per finished cell, appended atomically to a JSON Lines file.

A record (schema version 2, documented key by key in ``docs/results-schema.md``; version-1 records stay readable)
holds the cell, its per-class metric values at every attack budget, per-stage timings and peak memory, and
provenance; :func:`build_record` assembles one and :func:`validate_record` checks one. :meth:`ResultStore.append` never leaves a half
record: under an ``fcntl`` lock on a sidecar lock file it writes the old content plus the new line to a temporary
file in the same folder, fsyncs it and renames it over the results file. A rerun asks :meth:`ResultStore.has`
(or :meth:`ResultStore.finished_ids`) and skips finished cells.

This module never imports torch: package versions come from ``importlib.metadata``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from advbench.cache import stable_hash
from advbench.errors import DataError

try:  # POSIX; elsewhere appends are still atomic (rename) but not serialized between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
THREAT_MODELS = ("compliant", "unconstrained")
STAGES = ("expose", "protect", "adapt", "generate", "score")
ROLES = ("illegal", "legal")
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy")
TOP_KEYS = ("schema_version", "cell_id", "config_hash", "cell", "metrics", "defense_info", "stages",
            "total_seconds", "provenance", "started_at", "finished_at")
TOP_KEYS_V2 = (*TOP_KEYS, "anytime")


def config_hash(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON form of ``obj`` (the stage cache's :func:`~advbench.cache.stable_hash`)."""
    return stable_hash(obj)


def cell_id(cell: dict[str, Any]) -> str:
    """The id of a cell (its ``to_json()`` form): the first 16 hex characters of its config hash."""
    return config_hash(cell)[:16]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_plugin(cell: dict[str, Any], kind: str, label: bool) -> None:
    spec = cell.get(kind)
    _require(isinstance(spec, dict), f"cell.{kind} must be an object")
    _require(isinstance(spec.get("name"), str) and spec["name"], f"cell.{kind}.name must be a non-empty string")
    _require(isinstance(spec.get("params"), dict), f"cell.{kind}.params must be an object")
    if label:
        _require(isinstance(spec.get("label"), str) and spec["label"], f"cell.{kind}.label must be a non-empty string")


def _check_point(point: Any, hib: dict[str, bool], where: str) -> None:
    """One evaluation: per-class values and the illegal/legal means (``metrics`` itself, or a curve point)."""
    _require(isinstance(point, dict), f"{where} must be an object")
    classes = point.get("classes")
    _require(isinstance(classes, dict), f"{where}.classes must be an object")
    for cls, row in classes.items():
        _require(isinstance(row, dict) and row.get("role") in ROLES,
                 f"{where}.classes.{cls}.role must be 'illegal' or 'legal'")
        values = row.get("values")
        _require(isinstance(values, dict) and all(_is_number(v) for v in values.values()),
                 f"{where}.classes.{cls}.values must map metric names to finite numbers")
    for role in ROLES:
        means = point.get(role)
        _require(isinstance(means, dict) and all(_is_number(v) for v in means.values()),
                 f"{where}.{role} must map metric names to finite numbers")
        unknown = set(means) - set(hib)
        _require(not unknown, f"{where}.{role} has metrics without a direction: {sorted(unknown)}")


def _check_metrics(metrics: Any, version: int, budgets: list[int] | None) -> None:
    _require(isinstance(metrics, dict), "metrics must be an object")
    hib = metrics.get("higher_is_better")
    _require(isinstance(hib, dict) and all(isinstance(v, bool) for v in hib.values()),
             "metrics.higher_is_better must map metric names to true/false")
    _require(isinstance(metrics.get("primary"), str) and metrics["primary"] in hib,
             "metrics.primary must name a metric listed in metrics.higher_is_better")
    _check_point(metrics, hib, "metrics")
    if version < 2:
        return
    curve = metrics.get("curve")
    _require(isinstance(curve, list) and curve, "metrics.curve must be a non-empty list")
    for i, point in enumerate(curve):
        _check_point(point, hib, f"metrics.curve[{i}]")
    got = [point.get("budget") for point in curve]
    want = budgets if budgets else [None]
    _require(got == want, f"metrics.curve budgets {got} must be the cell's budgets {want}")
    _require(all(curve[-1][k] == metrics[k] for k in ("classes", *ROLES)),
             "metrics.classes/illegal/legal must equal the last point of metrics.curve")
    if "before" in metrics:
        _check_point(metrics["before"], hib, "metrics.before")


def _check_stages(stages: Any) -> None:
    _require(isinstance(stages, list), "stages must be a list")
    for i, st in enumerate(stages):
        _require(isinstance(st, dict) and st.get("stage") in STAGES,
                 f"stages[{i}].stage must be one of {', '.join(STAGES)}")
        _require(st.get("class") is None or isinstance(st.get("class"), str),
                 f"stages[{i}].class must be a string or null")
        _require(isinstance(st.get("key"), str), f"stages[{i}].key must be a string")
        _require(_is_number(st.get("seconds")) and _is_number(st.get("peak_memory_mb")),
                 f"stages[{i}].seconds and peak_memory_mb must be numbers")
        _require(isinstance(st.get("cached"), bool), f"stages[{i}].cached must be true or false")
        budget = st.get("budget")
        _require(budget is None or (isinstance(budget, int) and not isinstance(budget, bool)),
                 f"stages[{i}].budget must be an integer or absent")


def validate_record(rec: Any) -> None:
    """Raise ``ValueError`` naming the first problem if ``rec`` is not a result record of a readable schema."""
    _require(isinstance(rec, dict), f"a record must be a JSON object, not {type(rec).__name__}")
    version = rec.get("schema_version")
    _require(version in READABLE_VERSIONS,
             f"schema_version must be one of {', '.join(map(str, READABLE_VERSIONS))}, got {version!r}")
    missing = [k for k in (TOP_KEYS_V2 if version >= 2 else TOP_KEYS) if k not in rec]
    _require(not missing, f"missing keys: {', '.join(missing)}")
    _require(isinstance(rec["cell_id"], str) and rec["cell_id"], "cell_id must be a non-empty string")
    _require(isinstance(rec["config_hash"], str) and rec["config_hash"], "config_hash must be a non-empty string")
    cell = rec["cell"]
    _require(isinstance(cell, dict), "cell must be an object")
    _check_plugin(cell, "defense", label=True)
    _check_plugin(cell, "attack", label=True)
    _check_plugin(cell, "domain", label=False)
    _require(isinstance(cell.get("model"), str), "cell.model must be a string")
    _require(cell.get("threat_model") in THREAT_MODELS, f"cell.threat_model must be one of {', '.join(THREAT_MODELS)}")
    _require(isinstance(cell.get("seed"), int) and not isinstance(cell.get("seed"), bool),
             "cell.seed must be an integer")
    budgets = cell.get("budgets")
    _require(budgets is None or (isinstance(budgets, list) and budgets and all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in budgets) and budgets == sorted(set(budgets))),
        "cell.budgets must be an increasing list of positive integers, or absent")
    _require("base" not in cell or cell["base"] == "exposed", "cell.base must be \"exposed\" or absent (the naive base)")
    _check_metrics(rec["metrics"], version, budgets)
    if version >= 2:
        anytime = rec["anytime"]
        _require(isinstance(anytime, dict) and isinstance(anytime.get("exact"), bool)
                 and isinstance(anytime.get("budget_param"), (str, type(None))),
                 "anytime must be an object with exact (true/false) and budget_param (string or null)")
    _require(isinstance(rec["defense_info"], dict), "defense_info must be an object")
    _check_stages(rec["stages"])
    _require(_is_number(rec["total_seconds"]), "total_seconds must be a number")
    _require(isinstance(rec["provenance"], dict), "provenance must be an object")
    for key in ("started_at", "finished_at"):
        _require(isinstance(rec[key], str), f"{key} must be an ISO 8601 string")


def summarize_classes(classes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"classes", "illegal", "legal"}``: per-class values and, per role, the mean of each metric."""
    point: dict[str, Any] = {"classes": classes}
    for role in ROLES:
        rows = [c["values"] for c in classes.values() if c["role"] == role]
        names = [n for n in (rows[0] if rows else {})]
        point[role] = {n: math.fsum(r[n] for r in rows) / len(rows) for n in names}
    return point


def build_record(cell: dict[str, Any], curve: list[tuple[int | None, dict[str, dict[str, Any]]]], primary: str,
                 higher_is_better: dict[str, bool], anytime: dict[str, Any],
                 before: dict[str, dict[str, Any]] | None = None, **rest: Any) -> dict[str, Any]:
    """A schema-2 record: ``curve`` is ``[(budget, {class: {"role", "values"}})]`` in budget order, ``before`` the
    same classes scored on the protected model before any attack (or None); ``rest`` holds ``defense_info``,
    ``stages``, ``total_seconds``, ``provenance``, ``started_at`` and ``finished_at``.

    ``metrics.classes/illegal/legal`` are the last point (the whole attack), as in schema 1.
    """
    points = [{"budget": budget, **summarize_classes(classes)} for budget, classes in curve]
    metrics = {"primary": primary, "higher_is_better": higher_is_better,
               **{k: points[-1][k] for k in ("classes", *ROLES)}, "curve": points,
               **({"before": summarize_classes(before)} if before else {})}
    record = {"schema_version": SCHEMA_VERSION, "cell_id": cell_id(cell), "config_hash": config_hash(cell),
              "cell": cell, "metrics": metrics, "anytime": anytime, **rest}
    validate_record(record)
    return record


class ResultStore:
    """A JSON Lines results file: read every record, test for a finished cell, append one record atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def _lines(self) -> list[str]:
        if not self.path.exists():
            return []
        if not self.path.is_file():
            raise DataError(f"results path {self.path} is not a file; pass a .jsonl file path")
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"results file {self.path} is not UTF-8 text ({exc.reason}); "
                            "pass an advbench results .jsonl file") from None

    def records(self) -> list[dict[str, Any]]:
        """Every record in file order; a missing file is empty. A bad line raises :class:`DataError`."""
        out = []
        for number, line in enumerate(self._lines(), 1):
            if not line.strip():
                continue
            where = f"results file {self.path} line {number}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not a JSON object: {exc.msg} (column {exc.colno}); "
                                "fix or remove that line") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where} is not a JSON object: got a {type(rec).__name__}; fix or remove that line")
            try:
                validate_record(rec)
            except ValueError as exc:
                raise DataError(f"{where} is not an advbench result record: {exc}; "
                                "fix or remove that line") from None
            out.append(rec)
        return out

    def finished_ids(self) -> set[str]:
        """The cell ids of every record in the file."""
        return {rec["cell_id"] for rec in self.records()}

    def has(self, cell_id: str) -> bool:
        """Whether a record for ``cell_id`` is already stored."""
        return cell_id in self.finished_ids()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` atomically; return False (and write nothing) if its cell id is already stored.

        A malformed record is a programming error (``ValueError``). The existing file is read and checked first,
        so a corrupt results file raises :class:`DataError` instead of being extended.
        """
        validate_record(record)
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), allow_nan=False)
        with self._locked():
            if record["cell_id"] in self.finished_ids():  # another process may have finished it meanwhile
                return False
            old = self.path.read_bytes() if self.path.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            mode = (self.path.stat().st_mode & 0o777) if self.path.exists() else (0o666 & ~_umask())
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(old + line.encode("utf-8") + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self.path.parent)
        return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a no-op where directories cannot be opened)."""
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


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree holding ``folder``.

    Defaults to the folder advbench is imported from; not a repository (or no git) gives ``None`` values.
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], folder)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` from package metadata (nothing is imported); None when absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and with what a record was produced.

    ``extra`` is merged in last; the runner passes ``torch_threads`` (this module does not import torch) and
    ``plugins`` (for each plugin of the cell, the entry point and the version of the distribution providing it).
    """
    from advbench import __version__

    git = git_state()
    info: dict[str, Any] = {
        "advbench_version": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "plugins": {},
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    info.update(extra or {})
    return info

