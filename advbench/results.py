"""The results store: one JSON record per finished cell, appended atomically to a JSON Lines file.

A record (schema version 2, documented key by key in ``docs/results-schema.md``; version-1 records stay readable)
holds the cell, its per-class metric values at every attack budget, per-stage timings and peak memory,
provenance and (optional: older records lack it) a few generated images per class; :func:`build_record`
assembles one and :func:`validate_record` checks one. :meth:`ResultStore.append` never leaves a half record:
under an ``fcntl`` lock on a sidecar lock file it writes the old content plus the new line to a temporary file
in the same folder, fsyncs it and renames it over the results file. A rerun asks :meth:`ResultStore.has`
(or :meth:`ResultStore.finished_ids`) and skips finished cells. A record that cannot be written (a full disk) is
kept in a pending side file and counts as finished; a last line cut short is read around and moved aside by the
next write (:mod:`advbench.safeio`).

Provenance (versions, git state, machine) is built by :mod:`advbench.provenance`. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

from advbench import safeio
from advbench.cache import stable_hash
from advbench.errors import DataError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
THREAT_MODELS = ("compliant", "unconstrained")
STAGES = ("expose", "protect", "adapt", "generate", "score")
ROLES = ("illegal", "legal")
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
        each = row.get("per_image", {})
        _require(isinstance(each, dict) and all(
            name in values and isinstance(v, list) and v and all(_is_number(x) for x in v)
            and abs(math.fsum(v) / len(v) - values[name]) <= 1e-6 * max(1.0, abs(values[name]))
            for name, v in each.items()),
            f"{where}.classes.{cls}.per_image must map metric names to non-empty lists of numbers whose mean is "
            "the class's value")
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


def _check_thumbnails(thumbs: Any, classes: dict[str, Any]) -> None:
    """The optional ``thumbnails`` (:mod:`advbench.thumbnails`): its shape only; the PNGs are not decoded here."""
    _require(isinstance(thumbs, dict), "thumbnails must be an object")
    for key in ("max_side", "per_strip"):
        value = thumbs.get(key)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"thumbnails.{key} must be a positive integer")
    entries = thumbs.get("classes")
    _require(isinstance(entries, dict), "thumbnails.classes must be an object")
    for cls, entry in entries.items():
        where = f"thumbnails.classes.{cls}"
        _require(cls in classes, f"{where} is not a class of metrics.classes")
        _require(isinstance(entry, dict) and entry.get("role") == classes[cls].get("role"),
                 f"{where}.role must be the class's role in metrics.classes")
        _require(isinstance(entry.get("prompt"), str), f"{where}.prompt must be a string")
        _require(isinstance(entry.get("after"), str) and entry["after"], f"{where}.after must be a base64 PNG")
        for slot in ("before", "reference"):  # reference: absent in records written before it existed
            _require(entry.get(slot) is None or (isinstance(entry[slot], str) and entry[slot]),
                     f"{where}.{slot} must be a base64 PNG or null")


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
    _require("metrics" not in cell or (isinstance(cell["metrics"], list) and cell["metrics"] and all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("params"), dict)
        for m in cell["metrics"])), "cell.metrics must be a non-empty list of {name, params}, or absent")
    adversary = cell.get("adversary")
    _require(adversary is None or (isinstance(adversary, dict) and all(
        isinstance(adversary.get(k), str) for k in ("suite", "fingerprint", "id")) and all(
        isinstance(adversary.get(k), int) for k in ("version", "selection_seed"))),
        "cell.adversary must be {suite, version, fingerprint, id, selection_seed}, or absent")
    _require(adversary is None or adversary["selection_seed"] != cell["seed"],
             "cell.adversary.selection_seed must differ from cell.seed (the adversary is chosen on other seeds)")
    _check_metrics(rec["metrics"], version, budgets)
    if "thumbnails" in rec:
        _check_thumbnails(rec["thumbnails"], rec["metrics"]["classes"])
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
                 before: dict[str, dict[str, Any]] | None = None, thumbnails: dict[str, Any] | None = None,
                 **rest: Any) -> dict[str, Any]:
    """A schema-2 record: ``curve`` is ``[(budget, {class: {"role", "values"}})]`` in budget order, ``before`` the
    same classes scored on the protected model before any attack (or None), ``thumbnails`` a few generated images
    per class (:mod:`advbench.thumbnails`; omitted when None); ``rest`` holds ``defense_info``, ``stages``,
    ``total_seconds``, ``provenance``, ``started_at`` and ``finished_at``.

    ``metrics.classes/illegal/legal`` are the last point (the whole attack), as in schema 1.
    """
    points = [{"budget": budget, **summarize_classes(classes)} for budget, classes in curve]
    metrics = {"primary": primary, "higher_is_better": higher_is_better,
               **{k: points[-1][k] for k in ("classes", *ROLES)}, "curve": points,
               **({"before": summarize_classes(before)} if before else {})}
    record = {"schema_version": SCHEMA_VERSION, "cell_id": cell_id(cell), "config_hash": config_hash(cell),
              "cell": cell, "metrics": metrics, "anytime": anytime, **rest,
              **({"thumbnails": thumbnails} if thumbnails is not None else {})}
    validate_record(record)
    return record


class ResultsWarning(UserWarning):
    """A results file was read around a problem: a last line cut short (moved to a side file on the next write)."""


RESULTS_FIX = "free space there or pass --results on a bigger disk"


class ResultStore:
    """A JSON Lines results file: read every record, test for a finished cell, append one record atomically.

    Side files next to ``<results>``: ``.lock`` (the writer lock), ``.pending/<cell_id>.json`` (records that could
    not be appended, e.g. on a full disk; they count as finished and the next write merges them) and
    ``.torn-<UTC time>`` (a last line cut short, moved aside by the next write).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def pending_dirs(self) -> list[Path]:
        """Where unappendable records are kept: ``<results>.pending/``, else a folder under the temp directory."""
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        return [self.path.with_name(self.path.name + ".pending"),
                Path(tempfile.gettempdir()) / "advbench-pending" / digest]

    def _read(self) -> tuple[bytes, list[dict[str, Any]], safeio.Torn | None]:
        """The file's bytes, its records, and its torn last line (ignored) if any; a bad line raises DataError."""
        if not self.path.exists():
            return b"", [], None
        if not self.path.is_file():
            raise DataError(f"results file {self.path} is not a file; pass a .jsonl file path")
        data = self.path.read_bytes()
        torn = safeio.torn_tail(data)
        out = []
        for number, raw in enumerate((data[:torn.offset] if torn else data).split(b"\n"), 1):
            if not raw.strip():
                continue
            where = f"results file {self.path} line {number}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{where} is not UTF-8 text ({exc.reason}); pass an advbench results .jsonl file, "
                                "or fix or remove that line") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{where} is not a JSON object: {exc.msg} (column {exc.colno}); "
                                "fix or remove that line") from None
            out.append(self._checked(rec, where, "line"))
        return data, out, torn

    @staticmethod
    def _checked(rec: Any, where: str, what: str) -> dict[str, Any]:
        if not isinstance(rec, dict):
            raise DataError(f"{where} is not a JSON object: got a {type(rec).__name__}; fix or remove that {what}")
        try:
            validate_record(rec)
        except ValueError as exc:
            raise DataError(f"{where} is not an advbench result record: {exc}; fix or remove that {what}") from None
        return rec

    def _pending(self) -> list[tuple[Path, dict[str, Any]]]:
        out = []
        for path, raw in safeio.read_pending(self.pending_dirs):
            where = f"pending record {path} (of results file {self.path})"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{where} is not JSON ({exc}); fix or remove that file") from None
            out.append((path, self._checked(rec, where, "file")))
        return sorted(out, key=lambda item: (item[1]["finished_at"], item[1]["cell_id"]))

    def records(self) -> list[dict[str, Any]]:
        """Every record in file order, then pending ones (not yet merged); a missing file is empty.

        A bad line raises :class:`DataError`, except a last line cut short: it is ignored with a
        :class:`ResultsWarning`, and the next write moves it to a side file.
        """
        _, out, torn = self._read()
        if torn is not None:
            warnings.warn(f"results file {self.path} line {torn.number} is cut short (a crash, a full disk or a "
                          f"partial copy); it is ignored, and the next write to the file moves it to a side file "
                          f"{self.path.name}.torn-<UTC time>", ResultsWarning, stacklevel=2)
        ids = {rec["cell_id"] for rec in out}
        return out + [rec for _, rec in self._pending() if rec["cell_id"] not in ids]

    def finished_ids(self) -> set[str]:
        """The cell ids of every record in the file or pending."""
        return {rec["cell_id"] for rec in self.records()}

    def has(self, cell_id: str) -> bool:
        """Whether a record for ``cell_id`` is already stored (or pending)."""
        return cell_id in self.finished_ids()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The writer lock; stale temporary files of killed writers are removed under it."""
        return safeio.locked(self.path, self.lock_path, self.pending_dirs)

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` atomically; return False (and add nothing) if its cell id is already stored.

        Pending records are merged first and a torn last line is moved to a side file. A malformed record is a
        programming error (``ValueError``); a corrupt results file raises :class:`DataError` and is not extended.
        When the file cannot be written (a full disk, ``ulimit -f``…) the record is kept in a pending file and a
        :class:`~advbench.errors.StorageError` says where.
        """
        validate_record(record)
        with self._locked():
            return self._write(record)[0]

    def flush_pending(self) -> int:
        """Merge pending records into the file (those whose cell id is not in it yet); return how many were added.
        Their side files are deleted once the merged file is durably in place. No pending records: a no-op."""
        if not safeio.read_pending(self.pending_dirs):
            return 0
        with self._locked():
            return self._write(None)[1]

    def _write(self, record: dict[str, Any] | None) -> tuple[bool, int]:
        """Under the lock: rewrite the file with pending records merged, a torn last line moved aside and
        ``record`` appended (unless its cell is stored). ``(appended, merged)``."""
        data, stored, torn = self._read()
        ids = {rec["cell_id"] for rec in stored}
        pending = self._pending()
        merge = []
        for _, rec in pending:
            if rec["cell_id"] not in ids:
                merge.append(rec)
                ids.add(rec["cell_id"])
        new = record is not None and record["cell_id"] not in ids
        if merge or new or torn is not None:
            head = data[:torn.offset] if torn is not None else data
            if head and not head.endswith(b"\n"):
                head += b"\n"
            lines = [*merge, *([record] if new else [])]
            out = head + b"".join(json.dumps(r, separators=(",", ":"), allow_nan=False).encode() + b"\n"
                                  for r in lines)
            mode = (self.path.stat().st_mode & 0o777) if self.path.exists() else None
            side = None
            try:
                if torn is not None:
                    side = safeio.side_path(self.path, "torn")
                    safeio.atomic_write(side, torn.data, mode)
                safeio.atomic_write(self.path, out, mode)
            except OSError as exc:
                if side is not None:
                    side.unlink(missing_ok=True)
                error = self._storage_error(exc, len(out), record if new else None, len(merge))
                if error is exc:
                    raise
                raise error from exc
            if torn is not None:
                warnings.warn(f"results file {self.path} line {torn.number} was cut short; moved it to {side} and "
                              "rewrote the file without it", ResultsWarning, stacklevel=3)
        safeio.drop_pending([path for path, _ in pending])  # merged, or already in the file
        return new, len(merge)

    def _storage_error(self, exc: OSError, needed: int, record: dict[str, Any] | None, n_pending: int
                       ) -> BaseException:
        """What to raise when the file could not be written; ``record`` (if new) is kept in a pending file."""
        data = None if record is None else json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        return safeio.unwritten(exc, f"writing results file {self.path}", self.path.parent, needed, RESULTS_FIX,
                                self.pending_dirs, None if record is None else (record["cell_id"], data), n_pending)
