"""Built-in attacks, registered through the `advbench` entry-point group like any third-party plugin.

References are lazy ("module:Class") so that listing plugins imports no torch.
"""

from advbench.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    register("fullft", "advbench_plugins.attacks.fullft:FullFineTune",
             "Full fine-tuning of the UNet (FreezeAsGuard's attacker); honours freeze masks when compliant.")
    register("lora", "advbench_plugins.attacks.lora:Lora",
             "LoRA adapters on the UNet's attention projections (IMMA's LoRA attack), merged; "
             "no adapter on frozen modules when compliant.")
    register("dreambooth", "advbench_plugins.attacks.dreambooth:DreamBooth",
             "DreamBooth: whole-UNet fine-tuning with an identifier token and prior preservation.")
    register("dreambooth-lora", "advbench_plugins.attacks.dreambooth:DreamBoothLoRA",
             "DreamBooth's objective (identifier + prior preservation) through LoRA adapters, merged.")
    register("textual-inversion", "advbench_plugins.attacks.textual_inversion:TextualInversion",
             "Textual inversion: learns a new token embedding only; a UNet freeze mask cannot limit it.")
    register("no-attack", "advbench_plugins.attacks.noattack:NoAttack",
             "No adaptation: samples the protected model as is (the before-attack reference row).")
