"""Built-in attacks, registered through the `advbench` entry-point group like any third-party plugin."""

from advbench.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    pass
