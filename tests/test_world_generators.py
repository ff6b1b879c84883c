"""The tiny world's procedural generators: deterministic, distinct classes, benchmark kept out of pretraining."""

import numpy as np
import pytest

from advbench_plugins.world.artworks import ArtworkGenerator, style_distance
from advbench_plugins.world.explicit import PARTS, RESTRICTED_PARTS, ExplicitGenerator
from advbench_plugins.world.generators import get_generator
from advbench_plugins.world.portraits import PortraitGenerator, attribute_distance

DOMAINS = ("portraits", "artworks", "explicit")


@pytest.mark.parametrize("domain", DOMAINS)
def test_images_are_deterministic_and_well_formed(domain):
    gen = get_generator(domain)
    fresh = type(gen)(seed=0)
    cls = gen.illegal[0]
    a, b = gen.images(cls, 4), fresh.images(cls, 4)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert gen.captions(cls, 3) == fresh.captions(cls, 3)
    # Images of one class vary (shift, lighting, noise), and image k does not depend on how many were drawn.
    assert not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(gen.images(cls, 2, start=2), a[2:])
    # Another world seed draws another world.
    assert not np.array_equal(type(gen)(seed=1).images(type(gen)(seed=1).illegal[0], 1)[0], a[0])


@pytest.mark.parametrize("domain, minimum", [("portraits", 30), ("artworks", 8), ("explicit", 6)])
def test_benchmark_classes_named_disjoint_and_enough(domain, minimum):
    gen = get_generator(domain)
    assert len(gen.benchmark_classes) >= minimum
    assert not set(gen.illegal) & set(gen.legal)
    assert len(set(gen.benchmark_classes)) == len(gen.benchmark_classes)
    for cls in gen.benchmark_classes:
        assert cls in gen.captions(cls, 1)[0]
        assert all(cls in p for p in gen.eval_prompts(cls))


def test_identities_and_styles_are_mutually_distinct():
    gen = PortraitGenerator(seed=0)
    bench = [gen.specs[c] for c in gen.benchmark_classes]
    assert min(attribute_distance(a, b) for i, a in enumerate(bench) for b in bench[i + 1:]) >= 5
    assert min(attribute_distance(p, b) for p in gen.pool for b in bench) >= 2
    assert len(gen.pool) >= 300
    art = ArtworkGenerator(seed=0)
    styles = [art.specs[c] for c in art.benchmark_classes]
    assert min(style_distance(a, b) for i, a in enumerate(styles) for b in styles[i + 1:]) >= 3
    assert min(style_distance(p, b) for p in art.pool for b in styles) >= 2


def test_class_images_differ_more_between_classes_than_within():
    gen = get_generator("portraits")
    means = [gen.images(c, 6).astype(float).mean(0) for c in gen.benchmark_classes[:6]]
    within = np.mean([np.abs(gen.images(c, 6).astype(float) - m).mean() for c, m in
                      zip(gen.benchmark_classes[:6], means)])
    between = np.mean([np.abs(a - b).mean() for i, a in enumerate(means) for b in means[i + 1:]])
    assert between > within


@pytest.mark.parametrize("domain", DOMAINS)
def test_pretraining_never_shows_benchmark_classes(domain):
    gen = get_generator(domain)
    images, captions = gen.pretrain_batch(np.random.default_rng(0), 64)
    assert images.shape == (64, 32, 32, 3)
    words = {w for cls in gen.benchmark_classes for w in cls.split() if w != "figure"}
    assert not any(w in c.split() for c in captions for w in words)
    if domain == "explicit":  # restricted parts never appear in the pool
        assert all(not set(s["parts"]) & set(range(len(RESTRICTED_PARTS))) for s in gen.pool)
        assert not any(p in c for c in captions for p in RESTRICTED_PARTS)


def test_explicit_parts_and_detector_labels():
    gen = ExplicitGenerator(seed=0)
    assert all(set(gen.specs[c]["parts"]) <= set(range(len(RESTRICTED_PARTS))) for c in gen.illegal)
    assert all(min(gen.specs[c]["parts"]) >= len(RESTRICTED_PARTS) for c in gen.legal)
    x, y = gen.detector_batch(np.random.default_rng(0), 8)
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, len(PARTS))
    assert set(np.unique(y)) <= {0.0, 1.0}
