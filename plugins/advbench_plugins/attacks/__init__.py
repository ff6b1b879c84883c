"""Built-in attacks, registered through the `advbench` entry-point group like any third-party plugin.

References are lazy ("module:Class") so that listing plugins imports no torch.
"""

from advbench.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    register("fullft", "advbench_plugins.attacks.fullft:FullFineTune",
             "Full fine-tuning of the UNet (FreezeAsGuard's attacker); honours freeze masks when compliant.")
