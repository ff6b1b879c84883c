"""Typed registries of plugins: one per kind (defense, attack, dataset, metric, domain).

Registration is cheap and lazy: an entry may hold a ``"module:Class"`` reference that is imported the first
time the plugin is used, so listing plugins never imports torch. Mistakes are reported loudly and name the
plugin that made them: a duplicate id names both plugins, a wrong base class names the class and the plugin,
and an unknown name suggests the closest ones.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from advbench.errors import PluginError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclass
class Entry:
    """One registered plugin."""

    kind: str
    name: str
    target: Any  # a class, or "module:Class"
    description: str
    source: str  # the plugin (distribution or module) that registered it
    _cls: type | None = field(default=None, repr=False)

    def load(self) -> type:
        """Import (if lazy) and return the plugin class, checking its base class."""
        if self._cls is None:
            cls = self.target
            if isinstance(cls, str):
                module_name, _, attr = cls.partition(":")
                try:
                    cls = getattr(importlib.import_module(module_name), attr)
                except (ImportError, AttributeError) as exc:
                    raise PluginError(
                        f"{self.kind} '{self.name}' from plugin '{self.source}' points at {self.target!r}, "
                        f"which cannot be imported ({exc}); reinstall or fix that plugin"
                    ) from exc
            _check_base(self.kind, self.name, cls, self.source)
            cls.name = self.name
            self._cls = cls
        return self._cls


def _base_classes() -> dict[str, type]:
    from advbench import interfaces

    return {
        "defense": interfaces.Defense,
        "attack": interfaces.Attack,
        "dataset": interfaces.DatasetSource,
        "metric": interfaces.Metric,
        "domain": interfaces.Domain,
    }


def _check_base(kind: str, name: str, cls: Any, source: str) -> None:
    base = _base_classes()[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"plugin '{source}' registered {kind} '{name}' as {cls!r}, which is not a subclass of "
            f"advbench.interfaces.{base.__name__}; make it inherit from {base.__name__}"
        )


class Registry:
    """Plugins of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any, description: str = "", *, source: str = "<unknown>") -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(
                f"plugin '{source}' registered a {self.kind} with invalid name {name!r}; "
                "use lower-case letters, digits, '-', '_' or '.'"
            )
        if name in self._entries:
            other = self._entries[name].source
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by plugin '{other}' and by plugin '{source}'; "
                "uninstall one of them or rename the plugin"
            )
        if not isinstance(target, str):
            _check_base(self.kind, name, target, source)
        elif ":" not in target:
            raise PluginError(
                f"plugin '{source}' registered {self.kind} '{name}' as {target!r}; "
                "a lazy reference must look like 'package.module:ClassName'"
            )
        if not description and not isinstance(target, str):
            description = (target.__doc__ or "").strip().splitlines()[0] if target.__doc__ else ""
        self._entries[name] = Entry(self.kind, name, target, description, source)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise PluginError(unknown_message(self.kind, name, self.names())) from None

    def get(self, name: str) -> type:
        """The plugin class registered as ``name``."""
        return self.entry(name).load()


def unknown_message(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(available) if available else "(none installed)"
    return f"Unknown {kind} '{name}'.{hint} Available: {listing}"
