"""A template advbench plugin: one toy defense and one toy metric."""

from advbench.hookspecs import hookimpl


@hookimpl
def register_defenses(register):
    register("example-noise", "advbench_example.plugin:NoiseDefense",
             "Toy defense: adds seeded Gaussian noise to every UNet weight.")


@hookimpl
def register_metrics(register):
    register("example-brightness", "advbench_example.plugin:BrightnessGap",
             "Toy metric: absolute gap in mean brightness to the reference images.")
