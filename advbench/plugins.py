"""Plugin loading: entry points of the group ``advbench``, an allow-list, broken-plugin isolation.

The built-in plugins (package ``advbench_plugins``) are loaded exactly like a third-party package: through
entry points declared in the project's pyproject. ``ADVBENCH_PLUGINS`` (comma-separated entry-point or
distribution names) restricts which plugins are loaded; ``ADVBENCH_PLUGINS=""`` loads none. A plugin that
fails to import or whose hook raises is named in a warning and skipped; the others keep working.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from functools import partial

import pluggy

from advbench import hookspecs
from advbench.errors import PluginError
from advbench.registry import Registry

GROUP = "advbench"
ALLOW_ENV = "ADVBENCH_PLUGINS"
KINDS = ("defense", "attack", "dataset", "metric", "domain")
_HOOK_OF_KIND = {kind: f"register_{kind}s" for kind in KINDS}

_pm: pluggy.PluginManager | None = None
_registries: dict[str, Registry] | None = None


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered and was skipped."""


def _allowed() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _check_allowed(allowed: set[str] | None) -> None:
    """Every name of the allow-list matches an installed entry point or distribution (a typo would otherwise
    silently load fewer plugins)."""
    if not allowed:
        return
    eps = list(importlib.metadata.entry_points(group=GROUP))
    known = {ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist}
    unknown = sorted(allowed - known)
    if unknown:
        raise PluginError(f"{ALLOW_ENV} names {', '.join(map(repr, unknown))}, which match no installed advbench "
                          f"plugin; available entry points: {', '.join(sorted(ep.name for ep in eps)) or 'none'} "
                          f"(distributions: {', '.join(sorted({ep.dist.name for ep in eps if ep.dist})) or 'none'})")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with entry-point plugins loaded."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        allowed = _allowed()
        _check_allowed(allowed)
        for ep in importlib.metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else ep.name
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            try:
                pm.register(ep.load(), name=f"{dist}:{ep.name}")
            except Exception as exc:  # a broken plugin must not take the others down
                warnings.warn(f"advbench plugin '{dist}:{ep.name}' failed to load and was skipped: {exc}",
                              PluginWarning, stacklevel=2)
        pm.check_pending()
        _pm = pm
    return _pm


def registries() -> dict[str, Registry]:
    """One :class:`Registry` per kind, filled by calling every plugin's ``register_*`` hooks."""
    global _registries
    if _registries is None:
        pm = get_plugin_manager()
        regs = {kind: Registry(kind) for kind in KINDS}
        for kind, hook_name in _HOOK_OF_KIND.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                register = partial(_register_from, regs[kind], impl.plugin_name)
                try:
                    impl.function(register)
                except PluginError:
                    raise  # duplicates, wrong base classes, bad names: loud, naming the plugin
                except Exception as exc:
                    warnings.warn(f"advbench plugin '{impl.plugin_name}' failed in {hook_name} and was "
                                  f"skipped: {exc}", PluginWarning, stacklevel=2)
        _registries = regs
    return _registries


def _register_from(registry: Registry, source: str, name, target, description: str = "") -> None:
    registry.register(name, target, description, source=source)


def registry(kind: str) -> Registry:
    return registries()[kind]


def get(kind: str, name: str) -> type:
    """The plugin class of ``kind`` registered as ``name`` (raises a 'Did you mean' error if unknown)."""
    return registry(kind).get(name)


def register_plugin(obj, name: str) -> None:
    """Register a plugin object (a module or class with hookimpls) at run time, e.g. in tests."""
    get_plugin_manager().register(obj, name=name)
    reset_registries()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin, name=name)
    reset_registries()


def reset_registries() -> None:
    global _registries
    _registries = None


def reset() -> None:
    """Forget loaded plugins so that the next call reloads entry points (tests, allow-list changes)."""
    global _pm
    _pm = None
    reset_registries()


def add_commands(cli) -> None:
    """Let plugins add CLI commands; a plugin whose hook raises is skipped with a warning naming it."""
    for impl in get_plugin_manager().hook.register_commands.get_hookimpls():
        try:
            impl.function(cli)
        except Exception as exc:
            warnings.warn(f"advbench plugin '{impl.plugin_name}' failed in register_commands and was skipped: "
                          f"{exc}", PluginWarning, stacklevel=2)
