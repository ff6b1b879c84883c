"""Cells: one (defense, attack, domain, model, threat model, seed) combination, validated before any work.

A :class:`PluginSpec` names a plugin and the user's raw parameters; resolving it imports the plugin and builds
its ``Params`` dataclass, so a typo fails in milliseconds with a one-line error and nothing is written.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from advbench import plugins
from advbench.errors import UserError
from advbench.interfaces import THREAT_MODELS
from advbench.params import build_params, to_dict


@dataclass
class PluginSpec:
    """A plugin by kind and name, with the user's parameters (raw strings or TOML values)."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def plugin_class(self) -> type:
        return plugins.get(self.kind, self.name)

    def build(self) -> Any:
        """Instantiate the plugin with validated parameters."""
        cls = self.plugin_class()
        return cls(build_params(cls.Params, self.params, f"{self.kind} '{self.name}'"))

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

    def __post_init__(self):
        if self.threat_model not in THREAT_MODELS:
            raise UserError(f"unknown threat model '{self.threat_model}'; use one of: {', '.join(THREAT_MODELS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, not {self.seed!r}")

    def to_json(self) -> dict[str, Any]:
        """The cell as recorded: resolved parameters (defaults included) so the id changes when they do."""
        return {
            "defense": {"name": self.defense.name, "params": self.defense.resolved_params(),
                        "label": self.defense.display_label()},
            "attack": {"name": self.attack.name, "params": self.attack.resolved_params(),
                       "label": self.attack.display_label()},
            "domain": {"name": self.domain.name, "params": self.domain.resolved_params()},
            "model": self.model or f"default:{self.domain.name}",
            "threat_model": self.threat_model,
            "seed": self.seed,
        }

    def validate(self) -> None:
        """Resolve every plugin and parameter (raises a UserError on the first mistake)."""
        for spec in (self.defense, self.attack, self.domain):
            spec.build()

    def describe(self) -> str:
        return (f"{self.domain.name} | {self.defense.display_label()} vs {self.attack.display_label()} | "
                f"{self.threat_model} | seed {self.seed}")
