"""The tiny world: procedural domains, the embedded pretrained model and the judges (metrics)."""

from advbench.hookspecs import hookimpl


@hookimpl
def register_domains(register):
    pass
