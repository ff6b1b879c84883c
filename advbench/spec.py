"""Benchmark specs: a TOML grid of defenses × attacks × domains × threat models × seeds.

```toml
name = "ci"
results = "results/ci.jsonl"       # default results file (``advbench bench --results`` overrides)
seeds = [0, 1, 2]
threat_models = ["compliant"]      # and/or "unconstrained"
bases = ["naive", "exposed"]       # optional (default naive): "exposed" fine-tunes the base on the publisher's share
model = "path/to/model"            # optional: a local model folder instead of each domain's default
metrics = ["clean-kid:num_subsets=50"]  # optional: metric plugins every cell scores besides its domain's

[[domains]]
name = "portraits"
params = { n_illegal = 2, n_legal = 2 }

[[defenses]]
name = "random"
label = "R"                        # optional; a sweep appends "[p=0.3]"
sweep = { p = [0.1, 0.3, 0.5] }    # optional: one entry per value (cross product over several keys)
attacks = ["fullft"]               # optional: only these attacks (names or labels) meet this defense

[[attacks]]
name = "fullft"
params = { steps = 100 }
budgets = [25, 50, 100]            # optional: the budgets of this attack's anytime curve (last = its steps)

[ray]                              # optional: each cell's resources with --executor ray (docs/cluster.md)
num_gpus = 1
```

``adversaries = "benchmarks/adversaries/standard.toml"`` (optional, with ``selection_seed``, default 10000) adds a
worst-case job per domain and defense, the undefended one included (:mod:`advbench.worstcase`,
docs/adversaries.md): the suite's strongest adversary, chosen on the selection seed and run on ``seeds``.

A top-level ``budgets = [...]`` applies to every attack that supports anytime evaluation (an attack's own
``budgets`` wins); without either, each such attack scores its default budgets (``steps``/8, /4, /2, ``steps``).
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advbench.cells import MAX_SEED, Cell, PluginSpec, metric_spec
from advbench.errors import UserError
from advbench.executors import check_ray_table
from advbench.exposure import BASES
from advbench.results import cell_id
from advbench.validation import check_spec_path, path_params

TOP_KEYS = {"name", "description", "results", "seeds", "threat_models", "model", "domains", "defenses", "attacks",
            "budgets", "bases", "ray", "metrics", "adversaries", "selection_seed"}
ENTRY_KEYS = {"name", "params", "label", "sweep"}
ATTACK_KEYS = ENTRY_KEYS | {"budgets"}
DEFENSE_KEYS = ENTRY_KEYS | {"attacks"}
SECTIONS = {"domains": "domain", "defenses": "defense", "attacks": "attack"}


@dataclass
class BenchSpec:
    """A parsed benchmark spec."""

    name: str
    path: Path
    results: str | None
    cells: list[Cell] = field(default_factory=list)
    ray: dict[str, Any] = field(default_factory=dict)  # per-cell resources with --executor ray (num_cpus, num_gpus)
    adversaries: Any = None  # an adversary suite (advbench.adversaries.Suite): worst-case jobs besides the cells
    selection_seed: int = 10_000  # the worst-case search's seed (never a reported one)


def _unknown_key(key: str, allowed: set[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"{where}: unknown key '{key}'.{hint} Allowed: {', '.join(sorted(allowed))}")


def _expand_entry(entry: Any, kind: str, where: str) -> list[PluginSpec]:
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a table like {{ name = \"...\" }}, not {entry!r}")
    allowed = {"attack": ATTACK_KEYS, "defense": DEFENSE_KEYS}.get(kind, ENTRY_KEYS)
    for key in entry:
        if key not in allowed:
            raise _unknown_key(key, allowed, where)
    if not isinstance(entry.get("name"), str):
        raise UserError(f"{where} needs a name, e.g. name = \"none\"")
    params = entry.get("params", {})
    sweep = entry.get("sweep", {})
    if not isinstance(params, dict) or not isinstance(sweep, dict):
        raise UserError(f"{where}: params and sweep must be tables, e.g. params = {{ p = 0.3 }}")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: sweep.{key} must be a non-empty list, e.g. sweep = {{ {key} = [1, 2] }}")
    label = entry.get("label")
    if not sweep:
        return [PluginSpec(kind, entry["name"], dict(params), label)]
    specs = []
    keys = sorted(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        combo = dict(zip(keys, values))
        suffix = ",".join(f"{k}={v}" for k, v in combo.items())
        specs.append(PluginSpec(kind, entry["name"], {**params, **combo},
                                f"{label or entry['name']}[{suffix}]"))
    return specs


def load_spec(path: str | Path, mixed_precision: str = "no", metrics: tuple[PluginSpec, ...] = ()) -> BenchSpec:
    """Parse and validate a spec; every plugin, parameter, path and class is checked before anything runs
    (:meth:`advbench.cells.Cell.validate`), and a cell that appears twice is refused. ``metrics`` (``--metric``)
    join the spec's own ``metrics`` in every cell."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"bench spec {path} does not exist; pass the path of a .toml spec (see benchmarks/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read bench spec {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"bench spec {path} is not valid TOML: {exc}; fix the file") from None
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown_key(key, TOP_KEYS, f"bench spec {path}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise UserError(f"bench spec {path}: seeds must be a non-empty list of integers from 0 to {MAX_SEED}, "
                        f"got {seeds!r}")
    for name, values in (("seeds", seeds), ("threat_models", data.get("threat_models", [])),
                         ("bases", data.get("bases", []))):
        repeated = sorted({str(v) for v in values if values.count(v) > 1}) if isinstance(values, list) else []
        if repeated:
            raise UserError(f"bench spec {path}: {name} lists {', '.join(repeated)} more than once; "
                            "list each value once")
    threats = data.get("threat_models", ["compliant"])
    if not isinstance(threats, list) or not threats:
        raise UserError(f"bench spec {path}: threat_models must be a non-empty list")
    bases = data.get("bases", ["naive"])
    if not isinstance(bases, list) or not bases or not all(b in BASES for b in bases):
        raise UserError(f"bench spec {path}: bases must be a non-empty list of {' and/or '.join(BASES)}, "
                        f"got {bases!r}")
    ray = check_ray_table(data.get("ray", {}), f"bench spec {path}")
    metrics = (*_metrics(data.get("metrics", []), f"bench spec {path}"), *metrics)
    lists: dict[str, list[PluginSpec]] = {}
    budgets: dict[int, Any] = {}  # id of an attack spec -> its entry's budgets (or the spec's)
    meets: dict[int, Any] = {}  # id of a defense spec -> the attacks it meets (None: all)
    for section, kind in SECTIONS.items():
        entries = data.get(section)
        if not isinstance(entries, list) or not entries:
            raise UserError(f"bench spec {path} needs at least one [[{section}]] table with a name")
        lists[section] = []
        for i, entry in enumerate(entries):
            specs = _expand_entry(entry, kind, f"bench spec {path}: {section}[{i}]")
            for spec in specs:
                budgets[id(spec)] = _budgets(entry.get("budgets"), data.get("budgets"), spec, f"bench spec {path}")
                meets[id(spec)] = entry.get("attacks")
            lists[section] += specs
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(f"bench spec {path}: model must be a path string")
    results = data.get("results")
    if results is not None and not isinstance(results, str):
        raise UserError(f"bench spec {path}: results must be a path string")
    for key, value in (("results", results), ("model", model)):
        check_spec_path(value or "", f"bench spec {path}: {key}")
    for section, specs in lists.items():
        for spec in specs:
            for name, value in path_params(spec.build().params).items():
                check_spec_path(value, f"bench spec {path}: {section} '{spec.display_label()}' parameter {name}")
    pairs = _pairs(lists["defenses"], lists["attacks"], meets, f"bench spec {path}")
    cells = [Cell(defense, attack, domain, threat, seed, model, budgets[id(attack)], base, mixed_precision, metrics)
             for domain in lists["domains"] for base in bases for defense, attack in pairs
             for threat in threats for seed in seeds]
    seen_cells: dict[str, Cell] = {}
    for cell in cells:
        cid = cell_id(cell.to_json())
        if cid in seen_cells:
            raise UserError(f"bench spec {path}: the cell '{cell.describe()}' appears twice (identical entries "
                            f"in [[{'/'.join(SECTIONS)}]]); remove the duplicate")
        seen_cells[cid] = cell
    for cell in cells:
        cell.validate()
    for section, specs in lists.items():
        seen: dict[str, dict[str, Any]] = {}
        for spec in specs:
            label = spec.display_label()
            if seen.setdefault(label, spec.params) != spec.params:
                raise UserError(f"bench spec {path}: two {section} share the label '{label}' with different "
                                "params; give each a distinct label")
    suite, selection_seed = _adversaries(data, path, seeds)
    return BenchSpec(name=str(data.get("name", path.stem)), path=path, results=results, cells=cells, ray=ray,
                     adversaries=suite, selection_seed=selection_seed)


def _adversaries(data: dict[str, Any], path: Path, seeds: list[int]) -> tuple[Any, int]:
    """The spec's ``adversaries`` suite (a path like ``results``, from the working directory) and selection seed."""
    selection_seed = data.get("selection_seed", 10_000)
    if not isinstance(selection_seed, int) or isinstance(selection_seed, bool) or not (
            10_000 <= selection_seed <= MAX_SEED):
        raise UserError(f"bench spec {path}: selection_seed must be an integer from 10000 to {MAX_SEED} "
                        f"(below 10000 are the reported seeds), got {selection_seed!r}")
    if "adversaries" not in data:
        return None, selection_seed
    if not isinstance(data["adversaries"], str):
        raise UserError(f"bench spec {path}: adversaries must be the path of a suite .toml, "
                        "e.g. \"benchmarks/adversaries/standard.toml\"")
    if any(s >= 10_000 for s in seeds):
        raise UserError(f"bench spec {path}: with adversaries, reported seeds must stay below 10000 (the "
                        "selection seeds); change seeds")
    from advbench.adversaries import load_suite

    return load_suite(data["adversaries"]), selection_seed


def _pairs(defenses: list[PluginSpec], attacks: list[PluginSpec], meets: dict[int, Any], where: str
           ) -> list[tuple[PluginSpec, PluginSpec]]:
    """(defense, attack) pairs in spec order: every attack, or only those a defense's ``attacks = [...]`` names
    (by attack name or label), so a small grid can pair each defense with one attack."""
    pairs = []
    for defense in defenses:
        wanted = meets[id(defense)]
        if wanted is None:
            pairs += [(defense, attack) for attack in attacks]
            continue
        known = {a.name for a in attacks} | {a.display_label() for a in attacks}
        if not isinstance(wanted, list) or not wanted or not all(isinstance(w, str) for w in wanted):
            raise UserError(f"{where}: defense '{defense.display_label()}' attacks must be a non-empty list of "
                            f"attack names or labels, e.g. attacks = [\"fullft\"]")
        for name in wanted:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise UserError(f"{where}: defense '{defense.display_label()}' names attack '{name}', which no "
                                f"[[attacks]] entry has.{hint} Available: {', '.join(sorted(known))}")
        pairs += [(defense, a) for a in attacks if a.name in wanted or a.display_label() in wanted]
    return pairs


def _budgets(own: Any, shared: Any, spec: PluginSpec, where: str) -> tuple[int, ...] | None:
    """An attack entry's budgets, else the spec's for an attack that supports anytime evaluation, else None."""
    from advbench.cells import check_budgets

    if own is not None:
        return check_budgets(own)
    if shared is None or spec.kind != "attack" or not getattr(spec.plugin_class(), "anytime", False):
        return None
    shared = check_budgets(shared)
    steps = spec.params.get("steps")
    if steps is not None and str(steps) != str(shared[-1]):
        raise UserError(f"{where}: the spec's budgets end at {shared[-1]} but attack '{spec.display_label()}' has "
                        f"steps = {steps}; give that attack its own budgets = [...]")
    return shared


def _metrics(entries: Any, where: str) -> list[PluginSpec]:
    """The spec's ``metrics``: a list of ``"NAME"``/``"NAME:k=v,..."`` strings or ``[[metrics]]`` tables."""
    if not isinstance(entries, list):
        raise UserError(f"{where}: metrics must be a list, e.g. metrics = [\"clip-score\"], or [[metrics]] tables")
    return [metric_spec(entry, f"{where}: metrics[{i}]") for i, entry in enumerate(entries)]
