"""The plugin hooks of advbench (pluggy project ``advbench``).

Each ``register_*`` hook receives a ``register`` callback. Call it as
``register(name, target, description="...")`` where ``target`` is the plugin class or, to keep
``advbench --help`` fast, a lazy ``"package.module:ClassName"`` reference that is imported on first use.
"""

import pluggy

hookspec = pluggy.HookspecMarker("advbench")
hookimpl = pluggy.HookimplMarker("advbench")


@hookspec
def register_defenses(register):
    """Register publisher-side defenses (subclasses of :class:`advbench.interfaces.Defense`)."""


@hookspec
def register_attacks(register):
    """Register attacker-side adaptations (subclasses of :class:`advbench.interfaces.Attack`)."""


@hookspec
def register_datasets(register):
    """Register dataset loaders (subclasses of :class:`advbench.interfaces.DatasetSource`)."""


@hookspec
def register_metrics(register):
    """Register image metrics (subclasses of :class:`advbench.interfaces.Metric`)."""


@hookspec
def register_domains(register):
    """Register benchmark scenarios (subclasses of :class:`advbench.interfaces.Domain`)."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``advbench`` CLI group ``cli``."""
