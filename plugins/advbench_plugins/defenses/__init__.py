"""Built-in defenses, registered through the `advbench` entry-point group like any third-party plugin.

References are lazy ("module:Class") so that listing plugins imports no torch.
"""

from advbench.hookspecs import hookimpl


@hookimpl
def register_defenses(register):
    register("none", "advbench_plugins.defenses.none:NoDefense",
             "No defense: the undefended baseline every score is compared with.")
    register("random", "advbench_plugins.defenses.random:RandomFreeze",
             "Random-p freezing of UNet tensors (FreezeAsGuard's R-p baseline).")
    register("freezeasguard", "advbench_plugins.defenses.freezeasguard:FreezeAsGuard",
             "FreezeAsGuard: bilevel-learned freeze mask of UNet tensors against illegal adaptation.")
    register("uce", "advbench_plugins.defenses.uce:UCE",
             "UCE: closed-form edit of cross-attention K/V projections erasing the illegal classes' names.")
    register("sophon", "advbench_plugins.defenses.sophon:Sophon",
             "SOPHON: first-order MAML suppression of simulated illegal fine-tunes, alternated with legal training.")
    register("imma", "advbench_plugins.defenses.imma:IMMA",
             "IMMA: ascent of a simulated adaptation's loss on the attention projections, alternating with it.")
    register("darkminer", "advbench_plugins.defenses.darkminer:DarkMiner",
             "Dark Miner: mine embeddings that still draw an illegal class, verify, circumvent (LoRA on to_v).")
