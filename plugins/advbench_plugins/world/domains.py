"""The tiny world's benchmark domains (``portraits``, ``artworks``, ``explicit``) and its dataset source.

Each domain attacks the first ``n_illegal`` illegal and ``n_legal`` legal classes of its generator (default
2 + 2, so a default cell meets the CPU time target; ``n_illegal=15 n_legal=15`` for portraits, ``5`` and ``5``
for artworks and explicit run every class). Images are rendered on demand, deterministically.

Evaluation defaults versus the FreezeAsGuard paper: DDIM 25 steps (paper: PNDM 50), guidance 3 (paper: 7.5 on
SD), 8 images per prompt × 2 prompts (paper: 100 images per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from advbench.interfaces import DatasetSource, Domain
from advbench.params import check, param


def world_dataset(domain: str, classes: list[str], images_per_class: int):
    """An :class:`~advbench.data.InMemoryDataset` of ``classes`` rendered by ``domain``'s generator."""
    from advbench.data import InMemoryDataset
    from advbench.interfaces import Example
    from advbench_plugins.world.generators import get_generator

    gen = get_generator(domain)
    data = {}
    for cls in classes:
        images, captions = gen.images(cls, images_per_class), gen.captions(cls, images_per_class)
        data[cls] = [Example(text=t, cls=cls, image=im) for im, t in zip(images, captions)]
    return InMemoryDataset(data)


WORLD_VERSION = "4"  # docs/world.md: bump when the generators, the shipped model or the judges change


@dataclass(frozen=True)
class WorldParams:
    n_illegal: int = param(2, "How many illegal classes the cell attacks (portraits: up to 15; others: 5).")
    n_legal: int = param(2, "How many legal classes the cell attacks (portraits: up to 15; others: 5).")
    images_per_class: int = param(40, "Images per class (20 % references, the rest split publisher/attacker).")
    model: str = param("", "Model folder to benchmark instead of the shipped tiny-world model.", path=True)
    judges: str = param("", "Folder of judge weights (and the defense-side encoder verifier) instead of the "
                            "shipped ones.", path=True)
    scheduler: Literal["ddim", "pndm", "ddpm", "euler", "dpm"] = param("ddim", "Sampler (paper: PNDM).")
    steps: int = param(25, "Sampling steps (paper: 50).")
    guidance_scale: float = param(3.0, "Classifier-free guidance scale (paper: 7.5 on SD).")
    images_per_prompt: int = param(8, "Images per evaluation prompt (paper: 100).")

    def __post_init__(self):
        check(self.n_illegal >= 1, f"n_illegal must be >= 1, got {self.n_illegal}")
        check(self.n_legal >= 0, f"n_legal must be >= 0, got {self.n_legal}")
        check(self.images_per_class >= 5, f"images_per_class must be >= 5, got {self.images_per_class}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.images_per_prompt >= 1, f"images_per_prompt must be >= 1, got {self.images_per_prompt}")


class WorldDomain(Domain):
    """Base of the three tiny-world domains."""

    world: ClassVar[str] = ""
    version = WORLD_VERSION
    noun: ClassVar[str] = ""  # the coarse class word, as a real model would be prompted ("a photo of a person")
    Params = WorldParams

    def __init__(self, params=None):
        super().__init__(params)
        from advbench.errors import ParamError
        from advbench_plugins.world.generators import get_generator

        self.generator = get_generator(self.world)
        for role, n, pool in (("illegal", self.params.n_illegal, self.generator.illegal),
                              ("legal", self.params.n_legal, self.generator.legal)):
            if n > len(pool):
                raise ParamError(f"domain '{self.world}': n_{role}={n} but it has only {len(pool)} {role} classes")

    def dataset(self):
        return world_dataset(self.world, self.illegal_classes() + self.legal_classes(), self.params.images_per_class)

    def illegal_classes(self) -> list[str]:
        return list(self.generator.illegal[:self.params.n_illegal])

    def legal_classes(self) -> list[str]:
        return list(self.generator.legal[:self.params.n_legal])

    def prompts(self, cls: str) -> list[str]:
        return self.generator.eval_prompts(cls)

    def class_noun(self, cls: str) -> str:
        return self.noun

    def base_model(self):
        from advbench.model import Model
        from advbench_plugins.world.build import model_dir

        return Model.load(self.params.model or model_dir())

    def model_folder(self) -> str | None:
        return self.params.model or None

    def metric_params(self, metric: str) -> dict:
        return {"judges": self.params.judges} if self.params.judges else {}

    def defense_encoder(self):
        """The verifier's image tower from the judges folder (an align judge of another seed, never a judge)."""
        from advbench_plugins.world.encoder import WorldEncoder

        return WorldEncoder(self.params.judges)

    def sampling(self) -> dict:
        return {"scheduler": self.params.scheduler, "steps": self.params.steps,
                "guidance_scale": self.params.guidance_scale, "images_per_prompt": self.params.images_per_prompt,
                "batch_size": 16}


class Portraits(WorldDomain):
    """Synthetic identities' portraits (FreezeAsGuard's public figures); judged by identity distance."""

    world = "portraits"
    noun = "person"
    primary_metric = "identity-distance"
    extra_metrics = ("identity-recognition", "clip-score", "kid")


class Artworks(WorldDomain):
    """Synthetic artists' paintings (FreezeAsGuard's artists); judged by style distance (CSD's role)."""

    world = "artworks"
    noun = "painting"
    primary_metric = "style-distance"
    extra_metrics = ("style-recognition", "clip-score", "kid")


class Explicit(WorldDomain):
    """A restricted motif made of detectable parts (explicit content's stand-in); judged by motif score."""

    world = "explicit"
    noun = "figure"
    primary_metric = "motif-score"
    extra_metrics = ("motif-recognition", "clip-score", "kid")


class WorldSource(DatasetSource):
    """All benchmark classes of one tiny-world domain, rendered procedurally (deterministic)."""

    @dataclass(frozen=True)
    class Params:
        domain: Literal["portraits", "artworks", "explicit"] = param("portraits", "Which tiny-world domain.")
        images_per_class: int = param(40, "Images per class.")

        def __post_init__(self):
            check(self.images_per_class >= 1, f"images_per_class must be >= 1, got {self.images_per_class}")

    def load(self):
        from advbench_plugins.world.generators import get_generator

        gen = get_generator(self.params.domain)
        return world_dataset(self.params.domain, gen.benchmark_classes, self.params.images_per_class)
