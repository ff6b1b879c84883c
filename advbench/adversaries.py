"""Adversary suites: a named, versioned set of attacker configurations (issue 21; docs/adversaries.md).

A defense that holds against the one attacker configuration a paper chose may fall to the same attack at four
times the learning rate. A suite lists the configurations a determined attacker would try, all at one step cap
(equal effort), and the worst-case search (:mod:`advbench.halving`) picks the strongest per defense and domain.

```toml
id = "standard"
version = 1
description = "every attack plugin on a learning-rate ladder around its calibrated default"
steps = 200                       # the shared step cap: every adversary's attack runs this many steps
budgets = [25, 50, 100, 200]      # the rungs of the search (the last one is ``steps``)
lr_multipliers = [0.5, 1, 2, 4, 8]  # default ladder: multiples of each attack's default learning rate

[[ladders]]
attack = "fullft"

[[ladders]]
attack = "lora"
params = { rank = 16 }            # fixed parameters of this ladder (never ``steps`` or ``lr``)
lr_multipliers = [1, 4]           # this ladder's own rungs of the lr ladder
label = "lora-r16"                # the adversaries' id prefix (default: the attack's name)
threat_model = "unconstrained"    # optional (default compliant)
```

Each ladder gives one adversary per multiplier, with id ``<label>@lr×<multiplier>`` (``fullft@lr×4``). The
suite's ``fingerprint()`` hashes everything the search depends on; records made by a suite will carry its id,
version and fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advbench.cells import PluginSpec, check_budgets
from advbench.errors import UserError
from advbench.interfaces import THREAT_MODELS

TOP_KEYS = {"id", "version", "description", "steps", "budgets", "lr_multipliers", "ladders"}
LADDER_KEYS = {"attack", "params", "lr_multipliers", "label", "threat_model"}
CONTROLLED = ("steps", "lr")  # set by the suite, never by a ladder's params


@dataclass(frozen=True)
class Adversary:
    """One attacker configuration of a suite: its id, the attack (params resolved by the suite) and threat model."""

    id: str
    attack: PluginSpec
    threat_model: str = "compliant"
    lr_multiplier: float = 1.0


@dataclass(frozen=True)
class Suite:
    id: str
    version: int
    description: str
    steps: int
    budgets: tuple[int, ...]
    adversaries: tuple[Adversary, ...]

    def fingerprint(self) -> str:
        """A hash of the suite's content (ids, attacks and resolved parameters, threat models, budgets)."""
        content = {"id": self.id, "version": self.version, "steps": self.steps, "budgets": list(self.budgets),
                   "adversaries": [[a.id, a.attack.name, a.attack.resolved_params(), a.threat_model]
                                   for a in self.adversaries]}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a one-line UserError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"adversary suite {path} not found; pass a .toml file (e.g. benchmarks/adversaries/standard.toml)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"adversary suite {path} is not valid TOML: {exc}") from None
    return parse_suite(data, str(path))


def _where_ok(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise UserError(f"{where}: {message}")


def _multipliers(value: Any, where: str) -> list[float]:
    _where_ok(isinstance(value, list) and len(value) > 0, where, "lr_multipliers must be a non-empty list of numbers")
    out = []
    for m in value:
        _where_ok(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0, where,
                  f"lr_multipliers must be positive finite numbers, got {m!r}")
        out.append(float(m))
    _where_ok(len(set(out)) == len(out), where, f"lr_multipliers repeat a value: {value}")
    return out


def _format(multiplier: float) -> str:
    return f"{multiplier:g}"


def parse_suite(data: dict[str, Any], where: str = "adversary suite") -> Suite:
    unknown = sorted(set(data) - TOP_KEYS)
    _where_ok(not unknown, where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    suite_id, version = data.get("id"), data.get("version")
    _where_ok(isinstance(suite_id, str) and suite_id.strip() != "", where, "id must be a non-empty string")
    _where_ok(isinstance(version, int) and not isinstance(version, bool) and version >= 1, where,
              "version must be a positive integer (raise it whenever an adversary changes)")
    steps = data.get("steps")
    _where_ok(isinstance(steps, int) and not isinstance(steps, bool) and steps > 0, where,
              "steps (the shared step cap) must be a positive integer")
    try:
        budgets = check_budgets(data.get("budgets", [steps]))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    _where_ok(budgets[-1] == steps, where, f"the last budget must be the step cap {steps}, got {budgets[-1]}")
    default_ladder = _multipliers(data.get("lr_multipliers", [1.0]), where)
    ladders = data.get("ladders")
    _where_ok(isinstance(ladders, list) and len(ladders) > 0, where, "needs at least one [[ladders]] entry")
    adversaries: list[Adversary] = []
    for n, ladder in enumerate(ladders, 1):
        at = f"{where}, ladder {n}"
        _where_ok(isinstance(ladder, dict), at, "must be a table")
        unknown = sorted(set(ladder) - LADDER_KEYS)
        _where_ok(not unknown, at, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(LADDER_KEYS))}")
        _where_ok(isinstance(ladder.get("attack"), str), at, "attack must name an attack plugin")
        params = ladder.get("params", {})
        _where_ok(isinstance(params, dict), at, "params must be a table")
        fixed = [k for k in CONTROLLED if k in params]
        _where_ok(not fixed, at, f"params may not set {', '.join(fixed)}: the suite sets steps and the lr ladder")
        threat_model = ladder.get("threat_model", "compliant")
        _where_ok(threat_model in THREAT_MODELS, at, f"threat_model must be one of {', '.join(THREAT_MODELS)}")
        label = ladder.get("label", ladder["attack"])
        _where_ok(isinstance(label, str) and label.strip() != "", at, "label must be a non-empty string")
        base = PluginSpec("attack", ladder["attack"], dict(params))
        try:
            default_lr = base.resolved_params().get("lr")
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from None
        _where_ok(isinstance(default_lr, (int, float)), at, f"attack '{ladder['attack']}' has no lr parameter to ladder")
        for m in _multipliers(ladder.get("lr_multipliers", default_ladder), at):
            spec = PluginSpec("attack", ladder["attack"], {**params, "steps": steps, "lr": default_lr * m},
                              f"{label}@lr×{_format(m)}")
            try:
                spec.build()
            except UserError as exc:
                raise UserError(f"{at}: {exc}") from None
            adversaries.append(Adversary(spec.label, spec, threat_model, m))
    ids = [a.id for a in adversaries]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    _where_ok(not twice, where, f"adversary id(s) {', '.join(twice)} appear twice; give one of the ladders a label")
    return Suite(suite_id, version, str(data.get("description", "")), steps, budgets, tuple(adversaries))
