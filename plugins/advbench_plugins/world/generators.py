"""The common shape of the tiny world's procedural generators (numpy only, deterministic from seeds).

A generator owns one domain's classes: *benchmark* classes (named, split into illegal and legal, never seen in
pretraining) and a *pretraining pool* (anonymous identities, other styles, benign motifs) with compositional
captions. Every image is a pure function of ``(world seed, class, image index)``: adding images or classes never
changes existing ones.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

DOMAINS = ("portraits", "artworks", "explicit")


def rng_for(*parts) -> np.random.Generator:
    """A numpy generator seeded by a hash of ``parts`` (strings and ints)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class WorldGenerator:
    """Base class: subclasses fill ``specs`` (class name → spec), ``illegal``, ``legal`` and ``pool``."""

    domain = ""
    noun = "class"

    def __init__(self, seed: int = 0, pool_size: int = 400):
        self.seed = seed
        self.pool_size = pool_size
        self.illegal: list[str] = []
        self.legal: list[str] = []
        self.specs: dict[str, object] = {}
        self.pool: list[object] = []
        self._build()

    # --------------------------------------------------------------------------- for subclasses
    def _build(self) -> None:
        raise NotImplementedError

    def render(self, spec, rng: np.random.Generator) -> np.ndarray:
        """One uint8 32×32×3 image of ``spec`` with per-image variation drawn from ``rng``."""
        raise NotImplementedError

    def class_caption(self, cls: str, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def eval_prompts(self, cls: str) -> list[str]:
        raise NotImplementedError

    def pool_caption(self, spec, rng: np.random.Generator) -> str:
        """A compositional caption (attributes in words) of a pretraining-pool item."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- public API
    @property
    def benchmark_classes(self) -> list[str]:
        return self.illegal + self.legal

    def image(self, cls: str, index: int) -> np.ndarray:
        return self.render(self.specs[cls], rng_for(self.domain, self.seed, "class", cls, index))

    def images(self, cls: str, n: int, start: int = 0) -> np.ndarray:
        """Images ``start … start+n-1`` of benchmark class ``cls`` (uint8 N×32×32×3)."""
        return np.stack([self.image(cls, i) for i in range(start, start + n)])

    def captions(self, cls: str, n: int, start: int = 0) -> list[str]:
        return [self.class_caption(cls, rng_for(self.domain, self.seed, "caption", cls, i))
                for i in range(start, start + n)]

    def pool_item(self, index: int, image_index: int) -> tuple[np.ndarray, str]:
        """Image ``image_index`` of pretraining-pool item ``index`` and its caption."""
        spec = self.pool[index]
        rng = rng_for(self.domain, self.seed, "pool", index, image_index)
        return self.render(spec, rng), self.pool_caption(spec, rng)

    def pretrain_batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        """``n`` fresh pool images with compositional captions (benchmark classes are never drawn)."""
        items = rng.integers(0, len(self.pool), n)
        images, captions = [], []
        for i in items:
            spec = self.pool[int(i)]
            images.append(self.render(spec, rng))
            captions.append(self.pool_caption(spec, rng))
        return np.stack(images), captions

    def judge_labels(self) -> list[str]:
        """Label names a judge classifier is trained on: benchmark classes then ``pool_<k>``."""
        return self.benchmark_classes + [f"pool_{k}" for k in range(len(self.pool))]

    def judge_batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` images with integer labels over :meth:`judge_labels` (benchmark and pool alike)."""
        n_bench = len(self.benchmark_classes)
        labels = rng.integers(0, n_bench + len(self.pool), n)
        images = [self.render(self.specs[self.benchmark_classes[k]] if k < n_bench else self.pool[k - n_bench], rng)
                  for k in labels]
        return np.stack(images), labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def get_generator(domain: str, seed: int = 0) -> WorldGenerator:
    """The generator of ``domain`` (cached: building the class tables takes a moment)."""
    if domain == "portraits":
        from advbench_plugins.world.portraits import PortraitGenerator as cls
    elif domain == "artworks":
        from advbench_plugins.world.artworks import ArtworkGenerator as cls
    elif domain == "explicit":
        from advbench_plugins.world.explicit import ExplicitGenerator as cls
    else:
        raise ValueError(f"unknown world domain {domain!r}; one of {', '.join(DOMAINS)}")
    return cls(seed=seed)
