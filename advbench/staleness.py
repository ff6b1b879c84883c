"""Fingerprints of what a cell's numbers depend on without being part of the cell, and the check that refuses to
reuse a finished record computed with other ones.

The base model's weights, the metrics' weights (the tiny world's judges) and the device type change numbers but
not a cell id, so a rerun that finds a finished cell compares today's fingerprints with the record's before it
skips the cell (:func:`check_not_stale`). The runner records the same fingerprints in every record's provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advbench.cache import stable_hash
from advbench.cells import Cell, PluginSpec
from advbench.errors import StaleResultError
from advbench.numerics import device_type

_FINGERPRINTS: dict[tuple[str | None, str], str] = {}


def build_metric(name: str, domain: Any) -> Any:
    """One of the domain's metrics, with the parameters the domain gives it."""
    return PluginSpec("metric", name, domain.metric_params(name)).build()


def cell_metric(cell: Cell, name: str, domain: Any) -> Any:
    """A metric of the cell: one it adds (``--metric``, with its own parameters) or one of the domain's."""
    for spec in cell.metrics:
        if spec.name == name:
            return spec.build()
    return build_metric(name, domain)


def model_fingerprint(cell: Cell, base: Any | None = None) -> str:
    """The cell's base-model fingerprint: of ``base`` when given (and remembered), else loaded once per process."""
    key = (cell.model, stable_hash([cell.domain.name, cell.domain.resolved_params()]))
    if base is not None or key not in _FINGERPRINTS:
        if base is None:
            from advbench.model import Model

            base = Model.load(cell.model) if cell.model else cell.domain.build().base_model()
        _FINGERPRINTS[key] = base.fingerprint()
    return _FINGERPRINTS[key]


def check_not_stale(record: dict[str, Any], cell: Cell, results: str | Path, device: str) -> None:
    """Refuse to resume over a finished cell made on another device type, or whose base model or metric weights
    differ from today's (``results`` names the file in the message, ``device`` is this run's device).

    Records written before fingerprints were recorded carry none and are trusted as they are.
    """
    prov = record.get("provenance", {})
    then, now = device_type(prov.get("device", "cpu")), device_type(device)
    if then != now:
        raise StaleResultError(f"{results} already holds cell {record['cell_id']} ({cell.describe()}), computed "
                               f"on {then}; this run is on {now}, which gives other numbers: write to a new "
                               f"--results file, or run on --device {then}")
    if "model_fingerprint" not in prov:
        return
    now_model = model_fingerprint(cell)
    what = None
    if prov["model_fingerprint"] != now_model:
        what = f"base model (fingerprint {prov['model_fingerprint'][:12]}, now {now_model[:12]})"
    else:
        domain = cell.domain.build()
        if prov.get("defense_encoder_fingerprint"):  # a defense that verified with the domain's encoder
            now = domain.defense_encoder().fingerprint()
            if prov["defense_encoder_fingerprint"] != now:
                what = f"defense encoder (weights {prov['defense_encoder_fingerprint'][:12]}, now {now[:12]})"
        for name, old in (prov.get("metric_fingerprints") or {}).items() if what is None else ():
            now = cell_metric(cell, name, domain).fingerprint()
            if old != now:
                what = f"metric {name!r} (weights {str(old)[:12]}, now {str(now)[:12]})"
                break
    if what is not None:
        raise StaleResultError(f"{results} already holds cell {record['cell_id']} ({cell.describe()}), made with "
                               f"another {what}: the model or the shipped tiny world changed since; write to a "
                               f"new --results file, or delete that file's stale records to recompute them")


def encoder_provenance(fingerprint: str | None) -> dict[str, Any]:
    """The defense-side encoder's fingerprint, only in records of a defense that used one."""
    return {"defense_encoder_fingerprint": fingerprint} if fingerprint else {}
