"""What changes a number without changing a cell: the numerics signature of a result record.

Mixed precision is part of a cell (:class:`advbench.cells.Cell`), so records of fp32 and fp16 runs are
different cells. Some things that change numbers are not: the advbench version that computed a record, the
device type (cpu, cuda, mps), the domain's data version (the tiny world's version), the base model's weights and
the metrics' weights. They are recorded in ``provenance``, and :func:`check_comparable` refuses to put records
whose values differ into one comparison (a leaderboard domain: every row there is scored against the same
undefended baseline). On the exposed base it also refuses two exposed bases of one seed (:func:`base_signature`).
A record that lacks one of them (written before it was recorded) is not compared on it.
"""

from __future__ import annotations

import json
from typing import Any

from advbench.errors import DataError

#: (name shown in the error, how to read it from a record's provenance)
SIGNATURE = (
    ("advbench version", lambda p: p.get("advbench_version")),
    ("device type", lambda p: device_type(p["device"]) if p.get("device") else None),
    ("domain version", lambda p: p.get("domain_version")),
    ("base model (fingerprint)", lambda p: p.get("model_fingerprint")),
)


def device_type(device: str) -> str:
    """``cuda:1`` → ``cuda``: what changes the numerics (two GPUs of one kind give the same numbers)."""
    return str(device).split(":", 1)[0]


def signature(record: dict[str, Any]) -> dict[str, Any]:
    """The record's value of every :data:`SIGNATURE` entry (None where it was not recorded), and one entry per
    metric it scored: its weights' fingerprint (``null`` when its params identify it). Per metric, so a record
    that scored one more metric (``--metric``) still compares with one that did not on the metrics both have."""
    prov = record.get("provenance") or {}
    out = {name: read(prov) for name, read in SIGNATURE}
    # A domain's parameters (class counts, sampling steps, ...) change every number of a cell; two settings of one
    # domain name need distinct labels (``label`` in a spec's [[domains]]) to share a leaderboard.
    domain = (record.get("cell") or {}).get("domain") or {}
    if "params" in domain:
        out["domain parameters"] = json.dumps(domain["params"], sort_keys=True)
    for metric, fingerprint in sorted((prov.get("metric_fingerprints") or {}).items()):
        out[f"metric '{metric}' weights (fingerprint)"] = json.dumps(fingerprint)
    return out


def base_signature(record: dict[str, Any]) -> dict[str, Any]:
    """Per seed, the exposed base the record's cell started from: the final loss of its fine-tuning (empty on the
    naive base). Its stage key names a recipe, not the weights it trained to, and those move with the numerics
    (another transformers version: docs/results.md §5): a defended cell and the undefended cell it is compared
    with must share one exposed base, which a pair whose base was rebuilt in between would not."""
    base = (record.get("provenance") or {}).get("base") or {}
    if base.get("base") != "exposed" or base.get("final_loss") is None:
        return {}
    return {"exposed base (final loss of its fine-tuning)": base["final_loss"]}


def seed_group(group_of):
    """``group_of`` narrowed to one seed: the groups in which :func:`base_signature` must agree."""
    return lambda rec: f"{group_of(rec)}, seed {(rec.get('cell') or {}).get('seed')}"


RERUN_HINT = "keep them in separate results files (or rerun the older cells)"


def check_comparable(records: list[dict[str, Any]], group_of, signature_of=None, name_of=None,
                     hints: dict | None = None) -> None:
    """Refuse (a :class:`DataError` naming both records and both values) when two records of one group differ in
    any signature entry; ``group_of(record)`` names the group, e.g. the leaderboard's domain column. Without
    ``signature_of`` both checks run: :func:`signature` per group and :func:`base_signature` per group and seed.
    ``name_of(record)`` says where a record came from (default ``cell <id>``); ``hints`` maps a signature
    function to the fix the message suggests (default :data:`RERUN_HINT`). An entry a record lacks (``None``:
    older records) is not compared."""
    if signature_of is None:
        check_comparable(records, group_of, signature, name_of, hints)
        check_comparable(records, seed_group(group_of), base_signature, name_of, hints)
        return
    name_of = name_of or (lambda rec: f"cell {rec['cell_id']}")
    hint = (hints or {}).get(signature_of, RERUN_HINT)
    first: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
    for rec in records:
        group = group_of(rec)
        for name, value in signature_of(rec).items():
            if value is None:
                continue
            seen = first.setdefault((group, name), (value, rec))
            if seen[0] != value:
                raise DataError(f"records of '{group}' differ in {name}: {name_of(seen[1])} has {_short(seen[0])}, "
                                f"{name_of(rec)} has {_short(value)}; their numbers are not comparable: {hint}")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:12] + "…"
