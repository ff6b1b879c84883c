"""The shipped judges load from the package assets and behave as their metrics promise on procedural images."""

import numpy as np
import pytest

from advbench.cells import PluginSpec
from advbench.interfaces import Context
from advbench_plugins.world.build import judges_dir, model_dir
from advbench_plugins.world.generators import get_generator
from advbench_plugins.world.judges import JUDGES, load_judge

CTX = Context(progress=False)


def metric(name):
    return PluginSpec("metric", name, {}).build()


@pytest.mark.parametrize("kind", JUDGES)
def test_judges_load_from_shipped_safetensors(kind):
    assert (judges_dir() / f"{kind}.safetensors").exists()
    assert not list(judges_dir().glob("*.pt")) and not list(judges_dir().glob("*.pkl"))
    model, meta = load_judge(kind)
    assert model.embed(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 64)
    assert meta["kind"] == kind


def test_shipped_model_is_a_model_folder():
    from advbench.model import Model

    model = Model.load(model_dir())
    assert model.resolution == 32 and any("attn2.to_k" in n for n, _ in model.unet.named_parameters())


@pytest.mark.parametrize("domain, dist, rec", [("portraits", "identity-distance", "identity-recognition"),
                                               ("artworks", "style-distance", "style-recognition")])
def test_distance_and_recognition_separate_classes(domain, dist, rec):
    gen = get_generator(domain)
    a, b = gen.benchmark_classes[0], gen.benchmark_classes[-1]
    refs, same, other = gen.images(a, 8, 500000), gen.images(a, 8, 500100), gen.images(b, 8, 500000)
    assert metric(dist).score(same, refs, None, CTX, cls=a) < metric(dist).score(other, refs, None, CTX, cls=a)
    assert metric(rec).score(same, None, None, CTX, cls=a) >= 0.9
    assert metric(rec).score(other, None, None, CTX, cls=a) <= 0.1


def test_motif_score_follows_the_parts():
    gen = get_generator("explicit")
    score = metric("motif-score")
    illegal, legal = gen.illegal[-1], gen.legal[-1]  # every restricted part / every benign part
    restricted = score.score(gen.images(illegal, 8, 500000), None, None, CTX, cls=illegal)
    clothed = score.score(gen.images(legal, 8, 500000), None, None, CTX, cls=illegal)
    assert restricted > 2.5 and clothed < 1.0
    assert score.score(gen.images(legal, 8, 500000), None, None, CTX, cls=legal) > 2.5


def test_clip_score_prefers_the_matching_prompt():
    gen = get_generator("portraits")
    cls = gen.illegal[0]
    images = gen.images(cls, 8, 500000)
    clip = metric("clip-score")
    right = clip.score(images, None, [f"a photo of {cls}"] * 8, CTX, cls=cls)
    wrong = clip.score(images, None, [f"a photo of {gen.legal[3]}"] * 8, CTX, cls=cls)
    assert right > wrong


def test_fid_and_kid_are_small_for_the_same_class():
    gen = get_generator("artworks")
    a, b = gen.illegal[0], gen.legal[0]
    refs = gen.images(a, 16, 500000)
    for name in ("fid", "kid"):
        m = metric(name)
        same = m.score(gen.images(a, 16, 500100), refs, None, CTX, cls=a)
        other = m.score(gen.images(b, 16, 500000), refs, None, CTX, cls=a)
        assert np.isfinite(same) and same < other


def test_judge_fingerprint_follows_the_files(tmp_path):
    import shutil

    from advbench_plugins.world.build import judges_dir
    from advbench_plugins.world.metrics import JudgeParams, MotifScore, StyleDistance, judge_fingerprint

    for name in ("style.safetensors", "style.json"):
        shutil.copy(judges_dir() / name, tmp_path / name)
    shipped = judge_fingerprint("style")
    assert judge_fingerprint("style", str(tmp_path)) == shipped
    assert StyleDistance(JudgeParams()).fingerprint() == shipped
    assert MotifScore(JudgeParams()).fingerprint() != shipped  # another judge
    meta = tmp_path / "style.json"
    meta.write_text(meta.read_text() + " ")
    assert StyleDistance(JudgeParams(str(tmp_path))).fingerprint() != shipped


def test_world_check_effect_size_uses_the_sample_std():
    from advbench_plugins.world.check import effect_size

    row = {"before": {"m": [1.0, 1.0, 1.0]}, "after": {"m": [0.0, 0.2, 0.4]}}  # change -1.0, -0.8, -0.6
    assert effect_size(row, "m") == pytest.approx(0.8 / 0.2)  # sample std of the change is 0.2


@pytest.mark.parametrize("name, domain", [("identity-distance", "portraits"), ("identity-recognition", "portraits"),
                                          ("style-distance", "artworks"), ("motif-score", "explicit"),
                                          ("motif-recognition", "explicit")])
def test_per_image_values_average_to_the_score(name, domain):
    """Metric.per_image of the world's mean-over-images metrics: one value per image, their mean the score."""
    gen = get_generator(domain)
    cls = gen.benchmark_classes[0]
    images, refs = gen.images(cls, 6, 500000), gen.images(cls, 8, 500100)
    m = metric(name)
    each = m.per_image(images, refs, None, CTX, cls=cls)
    assert each.shape == (6,) and each.dtype == np.float64
    assert each.mean() == pytest.approx(m.score(images, refs, None, CTX, cls=cls), rel=1e-6, abs=1e-7)
    assert metric("kid").per_image(images, refs, None, CTX, cls=cls) is None  # a set statistic
