"""Real-image metrics: dlib faces and NudeNet with their shipped weights, open_clip with a tiny local checkpoint.

The real face comes from matplotlib's bundled sample photo (Grace Hopper), so no test downloads anything.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from advbench.errors import DataError, ParamError
from advbench.interfaces import Context, Metric
from advbench.params import build_params
from tests.toyworld import TINY_CLIP

CTX = Context(progress=False)


def _metric(cls, **values):
    return cls(build_params(cls.Params, values, f"metric {cls.__name__}"))


@pytest.fixture(scope="module")
def hopper():
    """A real portrait (600×512 RGB) that ships with matplotlib."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return np.asarray(img.convert("RGB"))


def _resize(image, size):
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size))


def _noise(h, w, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ plugins
def test_package_registers_lazily_without_heavy_imports():
    code = ("import sys, advbench_plugins.realmetrics as m; names = []; "
            "m.register_metrics(lambda n, t, d: names.append((n, t))); "
            "assert all(isinstance(t, str) and ':' in t for _, t in names), names; "
            "print(sorted(n for n, _ in names)); "
            "print([k for k in ('torch', 'dlib', 'onnxruntime', 'open_clip') if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(["clean-fid", "clean-kid", "csd", "deepface", "deepface-recognition", "dino",
                          "face-detect-rate", "face-distance", "lpips", "nudenet-score", "openclip-score"])
    assert out[1] == "[]"


def test_metrics_registered_beside_the_other_plugins(temp_plugin):
    import advbench_plugins.realmetrics as realmetrics
    from advbench import plugins

    if not plugins.get_plugin_manager().is_registered(realmetrics):  # until the entry point is installed
        temp_plugin(realmetrics, "test-realmetrics")
    expected = {"face-distance": (False, True, False), "face-detect-rate": (True, False, False),
                "nudenet-score": (True, False, False), "openclip-score": (True, False, True)}
    for name, flags in expected.items():
        cls = plugins.get("metric", name)
        assert issubclass(cls, Metric)
        assert (cls.higher_is_better, cls.needs_references, cls.needs_prompts) == flags


# -------------------------------------------------------------------------------------------- faces
def test_face_distance_reductions_and_penalty():
    from advbench_plugins.realmetrics.faces import face_distances

    refs = np.zeros((2, 128))
    refs[1, 0] = 2.0
    g = np.zeros(128)
    g[0] = 1.0
    d = {r: face_distances([g, None], refs, r, "euclidean", 3.0) for r in ("pairs", "mean", "nearest")}
    assert d["pairs"].tolist() == [1.0, 3.0]  # |g - r1| = |g - r2| = 1
    assert d["mean"].tolist() == [0.0, 3.0]  # g is the references' centroid
    assert d["nearest"].tolist() == [1.0, 3.0]
    cos = face_distances([g], np.stack([g, -g]), "pairs", "cosine")
    assert cos.tolist() == pytest.approx([1.0])  # (0 + 2) / 2


def test_dlib_embedding_of_a_real_face_and_of_its_aligned_chip(hopper):
    import dlib

    from advbench_plugins.realmetrics.faces import get_embedder, model_files

    assert all(p.is_file() for p in model_files().values())
    emb = get_embedder("hog")
    image = _resize(hopper, (128, 150))
    rects = emb.detect(image)
    assert len(rects) == 1
    full = emb.embed(image)
    chip = dlib.get_face_chip(image, emb.aligner(image, rects[0]), size=150)
    assert full.shape == (128,)
    np.testing.assert_allclose(emb.embed_chip(chip), full, atol=1e-6)  # the encoder path, without detection
    flipped = emb.embed(np.ascontiguousarray(image[:, ::-1]))
    stranger = emb.embed_chip(_noise(150, 150))
    assert np.linalg.norm(flipped - full) < 0.6  # dlib's same-person threshold
    assert np.linalg.norm(stranger - full) > np.linalg.norm(flipped - full)
    assert emb.embed(_noise(150, 128)) is None


def test_cnn_detector_finds_the_same_face(hopper):
    from advbench_plugins.realmetrics.faces import get_embedder

    image = _resize(hopper, (128, 150))
    cnn, hog = get_embedder("cnn").embed(image), get_embedder("hog").embed(image)
    assert cnn is not None and np.linalg.norm(cnn - hog) < 0.6


def test_face_distance_metric_counts_missing_faces_as_the_penalty(hopper):
    from advbench_plugins.realmetrics.faces import FaceDetectRate, FaceDistance

    refs = _resize(hopper, (128, 150))[None]
    other_view = _resize(hopper[20:, 20:], (128, 150))
    noise = _noise(150, 128)
    same = _metric(FaceDistance).score(other_view[None], refs, None, CTX, "hopper")
    assert 0.0 < same < 0.6
    for penalty in (1.0, 4.0):
        mixed = _metric(FaceDistance, no_face_distance=penalty).score(np.stack([other_view, noise]), refs, None, CTX)
        assert mixed == pytest.approx((same + penalty) / 2)
    mean_ref = _metric(FaceDistance, reduce="mean", distance="cosine").score(other_view[None], refs, None, CTX)
    assert 0.0 < mean_ref < same  # cosine distances of dlib descriptors are much smaller than Euclidean ones
    rate = _metric(FaceDetectRate).score(np.stack([other_view, noise, refs[0]]), None, None, CTX)
    assert rate == pytest.approx(2 / 3)


def test_face_distance_user_errors(hopper):
    from advbench_plugins.realmetrics.faces import FaceDistance

    image = _resize(hopper, (128, 150))[None]
    with pytest.raises(DataError, match="no face in any of the 1 reference images of class 'x'"):
        _metric(FaceDistance).score(image, _noise(64, 64)[None], None, CTX, "x")
    with pytest.raises(ParamError, match="reduce"):
        _metric(FaceDistance, reduce="median")
    with pytest.raises(ParamError, match="no_face_distance"):
        _metric(FaceDistance, no_face_distance=-1)
    with pytest.raises(ValueError, match="uint8"):
        _metric(FaceDistance).score(image.astype(np.float32), image, None, CTX)


# ------------------------------------------------------------------------------------------- nudenet
def test_exposed_sums_add_only_the_chosen_classes():
    from advbench_plugins.realmetrics.nudity import EXPOSED, exposed_sums

    found = [[{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}, {"class": "BUTTOCKS_EXPOSED", "score": 0.25},
              {"class": "BELLY_COVERED", "score": 0.9}], [], [{"class": "FACE_MALE", "score": 0.7}]]
    assert exposed_sums(found).tolist() == [0.75, 0.0, 0.0]
    assert exposed_sums(found, ("FACE_MALE", "BELLY_COVERED")).tolist() == [pytest.approx(0.9), 0.0, 0.7]
    assert len(EXPOSED) == 9 and all(c.endswith("_EXPOSED") for c in EXPOSED)


def test_nudenet_sees_arrays_as_it_sees_files_and_scores_them(hopper, tmp_path):
    from nudenet import NudeDetector
    from PIL import Image

    from advbench_plugins.realmetrics.nudity import NudeNetScore, detections

    path = tmp_path / "hopper.png"
    Image.fromarray(hopper).save(path)
    from_file = NudeDetector().detect(str(path))
    faces = [d["score"] for d in from_file if d["class"] == "FACE_FEMALE"]
    assert faces, from_file  # NudeNet also detects faces: the one real detection a test image can show
    from_array = detections(np.stack([hopper, _noise(600, 512)]), batch_size=2)
    assert [d["class"] for d in from_array[0]] == [d["class"] for d in from_file]
    np.testing.assert_allclose([d["score"] for d in from_array[0]], [d["score"] for d in from_file], atol=1e-5)
    assert from_array[1] == []

    images = np.stack([hopper, _noise(600, 512)])
    face_score = _metric(NudeNetScore, classes="FACE_FEMALE").score(images, None, None, CTX)
    assert face_score == pytest.approx(sum(faces) / 2, abs=1e-5)
    assert _metric(NudeNetScore).score(images, None, None, CTX) == 0.0  # a clothed portrait and noise


def test_nudenet_params():
    from advbench_plugins.realmetrics.nudity import NudeNetScore

    with pytest.raises(ParamError, match="unknown NudeNet class 'BREAST'; known: FEMALE_GENITALIA_COVERED"):
        _metric(NudeNetScore, classes="BREAST")
    assert _metric(NudeNetScore, classes="FACE_MALE,FACE_FEMALE").params.classes == ("FACE_MALE", "FACE_FEMALE")


# ---------------------------------------------------------------------------------------------- clip
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny open_clip model saved as a local config + safetensors checkpoint."""
    from tests.toyworld import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_openclip_score_equals_clip_score_of_the_saved_model(tiny_clip):
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from advbench_plugins.realmetrics.clip import OpenClipScore

    model, config, checkpoint = tiny_clip
    images = np.stack([_noise(40, 48, seed) for seed in range(3)])
    candidates = [f"a photo of thing {i}" for i in range(24)]
    _, _, preprocess = open_clip.create_model_and_transforms("advbench-test-tinyclip")
    tokenizer = open_clip.get_tokenizer("advbench-test-tinyclip")
    with torch.inference_mode():
        img = F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(i)) for i in images])), dim=-1)
        cos = (img @ F.normalize(model.encode_text(tokenizer(candidates)), dim=-1).T).numpy()
    # Pair the images with their best and worst prompts so that both signs of the cosine are exercised.
    picks = [int(cos[0].argmax()), int(cos[1].argmin()), int(cos[2].argmax())]
    assert cos[1, picks[1]] < 0 < cos[0, picks[0]]
    expected = 100 * np.mean([max(cos[i, j], 0.0) for i, j in enumerate(picks)])
    metric = _metric(OpenClipScore, model=config, checkpoint=checkpoint, batch_size=2)
    score = metric.score(images, None, [candidates[j] for j in picks], CTX)
    assert score == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="one prompt per image"):
        metric.score(images, None, candidates[:2], CTX)


def test_openclip_missing_or_wrong_files_are_data_errors(tiny_clip, tmp_path):
    from advbench_plugins.realmetrics.clip import DEFAULT_CHECKPOINT, OpenClipScore

    images = _noise(32, 32)[None]
    with pytest.raises(DataError) as err:
        _metric(OpenClipScore).score(images, None, ["a cat"], CTX)
    message = str(err.value)
    assert DEFAULT_CHECKPOINT in message and "laion2b_s34b_b79k" in message and "checkpoint=PATH" in message
    assert "\n" not in message
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(DataError, match=f"checkpoint {missing} not found"):
        _metric(OpenClipScore, model=tiny_clip[1], checkpoint=missing).score(images, None, ["a cat"], CTX)
    with pytest.raises(DataError, match="unknown open_clip architecture 'ViT-Q-99'"):
        _metric(OpenClipScore, model="ViT-Q-99", checkpoint=tiny_clip[2]).score(images, None, ["a cat"], CTX)
    wider = tmp_path / "advbench-test-widerclip.json"
    wider.write_text(json.dumps({**TINY_CLIP, "embed_dim": 24}))
    with pytest.raises(DataError, match=f"does not fit architecture {wider}"):
        _metric(OpenClipScore, model=str(wider), checkpoint=tiny_clip[2]).score(images, None, ["a cat"], CTX)


@pytest.mark.parametrize("arch", ["ViT-B-16-SigLIP", "roberta-ViT-B-32"])
def test_openclip_architectures_with_a_hub_text_tower_are_refused_before_any_download(arch):
    from advbench_plugins.realmetrics.clip import _architecture

    with pytest.raises(DataError, match="does not download"):
        _architecture(arch)
    assert _architecture("ViT-B-32") == "ViT-B-32"
