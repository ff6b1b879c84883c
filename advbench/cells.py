"""Cells: one (defense, attack, domain, model, threat model, seed) combination, validated before any work.

A :class:`PluginSpec` names a plugin and the user's raw parameters; resolving it imports the plugin and builds
its ``Params`` dataclass, so a typo fails in milliseconds with a one-line error and nothing is written. A spec
builds its plugin once and keeps it (plugins are configured objects: they keep no per-run state), so a cell's
plugins are resolved once however often the runner asks.

A cell of an attack that declares ``anytime`` is an anytime curve: one attack run scored at each of its
``budgets`` (optimizer steps; the last is the attack's ``steps``, by default ``steps``/8, /4, /2, ``steps``).

A cell's ``metrics`` are metric plugins it scores besides the domain's own (``--metric NAME:k=v``, a spec's
``metrics = [...]``), each with its own parameters.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from advbench import plugins
from advbench.errors import ParamError, UserError
from advbench.exposure import BASES
from advbench.interfaces import THREAT_MODELS
from advbench.params import build_params, to_dict

PRECISIONS = ("no", "fp16", "bf16")  # accelerate's mixed-precision names
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes < 2**32; torch's generators take any of these
MATCHED = "matched"  # a defense parameter value that follows the cell's attack (Defense.follows_attack)


@dataclass
class PluginSpec:
    """A plugin by kind and name, with the user's parameters (raw strings or TOML values)."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    _built: Any = field(default=None, init=False, repr=False, compare=False)

    def plugin_class(self) -> type:
        return plugins.get(self.kind, self.name)

    def build(self) -> Any:
        """The plugin with validated parameters (built on the first call, then reused)."""
        if self._built is None:
            cls = self.plugin_class()
            self._built = cls(build_params(cls.Params, self.params, f"{self.kind} '{self.name}'"))
        return self._built

    def resolved_params(self) -> dict[str, Any]:
        """All parameters, defaults included: what the result depends on."""
        return to_dict(self.build().params)

    def display_label(self) -> str:
        if self.label:
            return self.label
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"

    def source_version(self) -> dict[str, str]:
        source = plugins.registry(self.kind).entry(self.name).source
        dist = source.split(":", 1)[0]
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return {"plugin": source, "version": version}


@dataclass
class Cell:
    """One benchmark cell. ``model`` is a local model folder, or None for the domain's default model."""

    defense: PluginSpec
    attack: PluginSpec
    domain: PluginSpec
    threat_model: str = "compliant"
    seed: int = 0
    model: str | None = None
    budgets: tuple[int, ...] | None = None  # None: the attack's default budgets (when it is anytime)
    base: str = "naive"  # "exposed": the base fine-tuned on the publisher's share first (advbench.exposure)
    mixed_precision: str = "no"  # fp16/bf16 change the numbers, so they are part of the cell
    metrics: tuple[PluginSpec, ...] = ()  # metrics scored besides the domain's, sorted by name (one id per set)
    # a worst-case cell (advbench.worstcase): the suite's id, version, fingerprint, the chosen adversary's id and
    # the selection seed it was chosen on; the attack is that adversary, labelled worst-case[<suite>@<version>]
    adversary: dict[str, Any] | None = None

    def __post_init__(self):
        self.metrics = tuple(sorted(self.metrics, key=lambda spec: spec.name))
        names = [spec.name for spec in self.metrics]
        if len(set(names)) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise UserError(f"metric {', '.join(map(repr, twice))} is given twice; give each metric once")
        if self.threat_model not in THREAT_MODELS:
            raise UserError(f"unknown threat model '{self.threat_model}'; use one of: {', '.join(THREAT_MODELS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), not {self.seed!r}")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"unknown mixed precision '{self.mixed_precision}'; use one of: {', '.join(PRECISIONS)}")
        self._follow_attack()
        if self.base not in BASES:
            raise UserError(f"unknown base '{self.base}'; use one of: {', '.join(BASES)}")
        if self.budgets is not None:
            self.budgets = check_budgets(self.budgets)
            if not getattr(self.attack.plugin_class(), "anytime", False):
                raise UserError(f"attack '{self.attack.name}' cannot be scored at several budgets (it does not "
                                f"train through the engine's anytime snapshots); drop the budgets for it")
            steps = self.attack.params.get("steps")
            if steps is not None and str(steps) != str(self.budgets[-1]):
                raise UserError(f"budgets {format_budgets(self.budgets)} must end at the attack's steps ({steps}); "
                                f"drop steps=... or make the last budget {steps}")
            # The last budget is the attack's steps; the label stays what the user called the attack.
            self.attack = PluginSpec("attack", self.attack.name, {**self.attack.params, "steps": self.budgets[-1]},
                                     self.attack.display_label())

    def _follow_attack(self) -> None:
        """A defense parameter set to "matched" (the defense's ``follows_attack``) takes the cell's attack name;
        the label keeps "matched", so matched rows stay apart from a fixed choice in the leaderboard."""
        key = getattr(self.defense.plugin_class(), "follows_attack", None)
        if not key or str(self.defense.params.get(key, "")) != MATCHED:
            return
        label = self.defense.display_label()
        spec = PluginSpec("defense", self.defense.name, {**self.defense.params, key: self.attack.name}, label)
        try:
            spec.build()
        except ParamError as exc:
            raise ParamError(f"{label} follows the cell's attack ({key}=matched), but attack "
                             f"'{self.attack.name}' cannot be simulated: {exc}") from None
        self.defense = spec

    def resolved_budgets(self) -> tuple[int, ...] | None:
        """The budgets this cell scores (None: one evaluation after the whole attack)."""
        attack = self.attack.build()
        if not getattr(attack, "anytime", False):
            return None
        return self.budgets or attack.default_budgets()

    def to_json(self) -> dict[str, Any]:
        """The cell as recorded: resolved parameters (defaults included) so the id changes when they do."""
        return {
            "defense": {"name": self.defense.name, "params": self.defense.resolved_params(),
                        "label": self.defense.display_label()},
            "attack": {"name": self.attack.name, "params": self.attack.resolved_params(),
                       "label": self.attack.display_label()},
            # "label" only when the spec names the domain, so the ids of unlabelled cells are unchanged
            "domain": {"name": self.domain.name, "params": self.domain.resolved_params(),
                       **({"label": self.domain.label} if self.domain.label else {})},
            "model": self.model or f"default:{self.domain.name}",
            "threat_model": self.threat_model,
            "seed": self.seed,
            # absent for one-budget cells, so the ids of cells recorded before budgets existed are unchanged
            **({"budgets": list(budgets)} if (budgets := self.resolved_budgets()) else {}),
            # absent for the naive base, so the ids of cells recorded before exposed bases existed are unchanged
            **({"base": self.base} if self.base != "naive" else {}),
            # absent in full precision, so the ids of cells recorded before precision was part of a cell are unchanged
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision != "no" else {}),
            # absent without added metrics, so the ids of cells recorded before --metric existed are unchanged
            **({"metrics": [{"name": s.name, "params": s.resolved_params()} for s in self.metrics]}
               if self.metrics else {}),
            # absent outside worst-case cells, so every other cell id is unchanged
            **({"adversary": dict(self.adversary)} if self.adversary else {}),
        }

    def validate(self, deep: bool = True) -> None:
        """Resolve every plugin and parameter (raises a UserError on the first mistake); ``deep`` also checks
        everything the cell will read (metrics, model folder, every image, class sizes: :mod:`advbench.validation`)
        before any stage runs."""
        for spec in (self.defense, self.attack, self.domain, *self.metrics):
            spec.build()
        self.resolved_budgets()
        if self.metrics:
            from advbench.validation import added_metrics

            added_metrics(self.domain.build(), self.metrics)
        if deep:
            from advbench.validation import check_cell

            check_cell(self)

    def describe(self) -> str:
        """One line naming the cell (``bench --dry-run`` lists it, ``--match`` searches it): the domain's label,
        defense and attack labels, threat model and seed, then the precision and added metrics when set."""
        name = self.domain.label or self.domain.name
        domain = name if self.base == "naive" else f"{name} ({self.base} base)"
        precision = "" if self.mixed_precision == "no" else f" | {self.mixed_precision}"
        metrics = f" | +{', '.join(s.display_label() for s in self.metrics)}" if self.metrics else ""
        adversary = f" ({self.adversary['id']})" if self.adversary else ""
        return (f"{domain} | {self.defense.display_label()} vs {self.attack.display_label()}{adversary} | "
                f"{self.threat_model} | seed {self.seed}{precision}{metrics}")


def domain_key(cell: dict[str, Any]) -> str:
    """The leaderboard's domain column: the domain's label (its name unless the spec gave a ``label``), with its
    base when it is not the naive one.

    A defense on the exposed base is compared with the undefended exposed base only: the two bases are
    different starting points (the exposed one already knows the classes), never mixed in one row.
    """
    return with_base(cell["domain"].get("label") or cell["domain"]["name"], cell.get("base", "naive"))


#: The threat-model column of a worst-case row: the suite's adversaries may comply with the defense's
#: constraints or ignore them, so defended and undefended worst cases are compared whichever they used.
WORST_THREAT = "any"


def row_threat(cell: dict[str, Any]) -> str:
    """The leaderboard's threat-model column: the cell's, or ``any`` for a worst-case cell."""
    return WORST_THREAT if "adversary" in cell else cell["threat_model"]


def with_base(domain: str, base: str) -> str:
    """``domain`` as a table shows it: unchanged on the naive base, else with the base in brackets."""
    return domain if base == "naive" else f"{domain} ({base})"


def check_budgets(budgets: Any) -> tuple[int, ...]:
    """Budgets as a strictly increasing tuple of positive integers (a UserError says what is wrong)."""
    if isinstance(budgets, str):
        try:
            budgets = [int(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise UserError(f"budgets {budgets!r} must be comma-separated integers, e.g. 25,50,100,200") from None
    values = list(budgets) if isinstance(budgets, (list, tuple)) else None
    if (not values or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in values)
            or any(a >= b for a, b in zip(values, values[1:]))):
        raise UserError(f"budgets must be increasing positive integers (attack steps), e.g. 25,50,100,200; "
                        f"got {budgets!r}")
    return tuple(values)


def format_budgets(budgets: tuple[int, ...]) -> str:
    return ",".join(str(b) for b in budgets)


def metric_spec(item: Any, where: str) -> PluginSpec:
    """An added metric: ``"NAME"`` or ``"NAME:KEY=VALUE,KEY=VALUE"`` (``--metric``, a spec's ``metrics`` list) or a
    spec table ``{name = "NAME", params = {...}}``; ``where`` names the option or spec entry in errors.

    A comma-separated piece without ``=`` continues the previous value, so a list parameter reads as written:
    ``nudenet-score:classes=FEMALE_BREAST_EXPOSED,BUTTOCKS_EXPOSED``.
    """
    example = "clip-score or NAME:key=value,key=value"
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"name", "params"})
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'; a metric table has name and params")
        name, params = item.get("name"), item.get("params", {})
        if not isinstance(name, str) or not name or not isinstance(params, dict):
            raise UserError(f"{where} needs a name and optional params table, e.g. {{ name = \"clip-score\" }}")
        return PluginSpec("metric", name, dict(params))
    if not isinstance(item, str):
        raise UserError(f"{where} must be a metric name, e.g. {example}, not {item!r}")
    name, _, rest = item.partition(":")
    name = name.strip()
    if not name:
        raise UserError(f"{where} {item!r} names no metric; write e.g. {example}")
    params: dict[str, str] = {}
    last = None
    for piece in rest.split(",") if rest.strip() else ():
        key, sep, value = piece.partition("=")
        if not sep:
            if last is None:
                raise UserError(f"{where} {item!r}: {piece!r} is not key=value; write e.g. {example}")
            params[last] += "," + piece.strip()
            continue
        key = key.strip()
        if not key:
            raise UserError(f"{where} {item!r}: {piece!r} has no key; write e.g. {example}")
        if key in params:
            raise UserError(f"{where} {item!r} gives {key} twice; keep one")
        params[key], last = value.strip(), key
    return PluginSpec("metric", name, params)
