"""Built-in defenses, registered through the `advbench` entry-point group like any third-party plugin."""

from advbench.hookspecs import hookimpl


@hookimpl
def register_defenses(register):
    pass
