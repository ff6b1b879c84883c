"""deepface face identity on real photos that ship with installed packages, offline.

Faces: scikit-image's astronaut (Eileen Collins), matplotlib's Grace Hopper, and faces of scikit-image's LFW
subset (``skimage.data.lfw_subset()``: 25×25 grey crops of distinct people from Labeled Faces in the Wild).
"""

import json
import socket

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from advbench.errors import DataError, ParamError
from advbench.interfaces import Context
from advbench.params import build_params

CTX = Context(progress=False)
LFW = (0, 10, 20, 30, 40, 50)  # six faces of the LFW subset (its first 100 images are faces)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """deepface downloads what it misses: any connection attempt fails the test. HOME is a fresh folder, so a
    write to the user's home (deepface's default weights folder) would show."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _metric(cls, **values):
    return cls(build_params(cls.Params, values, f"metric {cls.__name__}"))


def _resize(image, size):
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


@pytest.fixture(scope="module")
def photos():
    """Full photos: the astronaut (512×512) and Grace Hopper (600×512)."""
    import matplotlib.cbook as cbook
    from skimage import data

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return {"astronaut": data.astronaut(), "hopper": np.asarray(img.convert("RGB"))}


@pytest.fixture(scope="module")
def small(photos):
    """The photos at half size (300×256), so detection is quick."""
    return {k: _resize(v, (256, v.shape[0] * 256 // v.shape[1])) for k, v in photos.items()}


@pytest.fixture(scope="module")
def faces(photos):
    """150×150 face crops of eight distinct people."""
    from skimage import data

    out = {"astronaut": _resize(photos["astronaut"][60:190, 160:290], (150, 150)),
           "hopper": _resize(photos["hopper"][130:350, 150:370], (150, 150))}
    lfw = data.lfw_subset()
    for i in LFW:
        grey = _resize((lfw[i] * 255).astype(np.uint8), (150, 150))
        out[f"lfw{i}"] = np.repeat(grey[..., None], 3, axis=2)
    return out


def augmented(face):
    """A flipped, a cropped (and resized back) and a brightened copy of a face."""
    h, w = face.shape[:2]
    crop = _resize(face[h // 12:h - h // 12, w // 12:w - w // 12], (w, h))
    bright = np.asarray(ImageEnhance.Brightness(Image.fromarray(face)).enhance(1.3))
    return {"flip": np.ascontiguousarray(face[:, ::-1]), "crop": crop, "bright": bright}


def _noise(h, w, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- distance
def test_augmented_copies_of_a_face_are_closer_to_it_than_other_faces(faces):
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceDistance

    metric = _metric(DeepFaceDistance, detector="skip")  # the crops are faces already
    for name, face in faces.items():
        copies = {k: metric.score(v[None], face[None], None, CTX, name) for k, v in augmented(face).items()}
        others = {o: metric.score(f[None], face[None], None, CTX, name) for o, f in faces.items() if o != name}
        assert max(copies.values()) < min(others.values()), (name, copies, others)
        assert max(copies.values()) < 0.07  # deepface's same-person threshold of Dlib (cosine)


def test_detectors_find_the_faces_of_full_photos_and_missing_faces_cost_the_penalty(small):
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceDistance

    hopper = small["hopper"]
    flipped = np.ascontiguousarray(hopper[:, ::-1])
    noise = _noise(*hopper.shape[:2])
    for detector in ("opencv", "dlib"):
        metric = _metric(DeepFaceDistance, detector=detector)
        (face,) = metric.embed(hopper[None], CTX)
        assert face.shape == (128,)
        same = metric.score(flipped[None], hopper[None], None, CTX, "hopper")
        other = metric.score(small["astronaut"][None], hopper[None], None, CTX, "hopper")
        assert same < 0.07 < other, (detector, same, other)
        assert metric.embed(noise[None], CTX) == [None]
        mixed = metric.score(np.stack([flipped, noise]), hopper[None], None, CTX, "hopper")
        assert mixed == pytest.approx((same + 1.0) / 2)  # no face: an orthogonal embedding's cosine distance
    penalised = _metric(DeepFaceDistance, detector="dlib", no_face_distance=3.0)
    assert penalised.score(noise[None], hopper[None], None, CTX, "hopper") == 3.0
    with pytest.raises(DataError, match="found no face in any of the 1 reference images of class 'x'"):
        penalised.score(hopper[None], noise[None], None, CTX, "x")


def test_reductions_and_distances_follow_deepface(faces):
    from deepface.modules.verification import find_distance

    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceDistance

    refs = np.stack([faces["astronaut"], augmented(faces["astronaut"])["flip"], faces["hopper"]])
    generated = augmented(faces["astronaut"])["crop"][None]
    metric = _metric(DeepFaceDistance, detector="skip", distance="euclidean_l2")
    g, r = np.stack(metric.embed(generated, CTX)), np.stack(metric.embed(refs, CTX))
    d = find_distance(r, g, "euclidean_l2")[0]
    expected = {"pairs": d.mean(), "nearest": d.min(), "mean": find_distance(r.mean(0, keepdims=True), g,
                                                                             "euclidean_l2")[0, 0]}
    for reduce, value in expected.items():
        got = _metric(DeepFaceDistance, detector="skip", distance="euclidean_l2", reduce=reduce).score(
            generated, refs, None, CTX, "astronaut")
        assert got == pytest.approx(value)
    assert expected["nearest"] < expected["mean"] < expected["pairs"]  # the hopper reference is far away


# ---------------------------------------------------------------------------------------- recognition
@pytest.fixture
def gallery(tmp_path, faces):
    folder = tmp_path / "gallery"
    folder.mkdir()
    lines = []
    for name, face in faces.items():
        Image.fromarray(face).save(folder / f"{name}.png")
        lines.append(json.dumps({"file_name": f"{name}.png", "text": f"a photo of {name}", "class": name}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_recognition_is_top1_among_the_gallery_identities(faces, gallery):
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceRecognition

    metric = _metric(DeepFaceRecognition, detector="skip", gallery=str(gallery))
    assert metric.check_domain(None) is None
    for name in ("astronaut", "hopper", "lfw20"):
        copies = np.stack(list(augmented(faces[name]).values()))
        assert metric.score(copies, faces[name][None], None, CTX, name) == 1.0
        assert metric.score(copies, faces["lfw0"][None], None, CTX, "lfw0") == 0.0
    # the target's own gallery entries are the references the runner passes, not the gallery's images
    mixed = np.stack([augmented(faces["astronaut"])["flip"], augmented(faces["hopper"])["flip"]])
    assert metric.score(mixed, faces["astronaut"][None], None, CTX, "astronaut") == 0.5
    assert metric.score(mixed, faces["hopper"][None], None, CTX, "someone-new") == 0.5
    opencv = _metric(DeepFaceRecognition, gallery=str(gallery), detector="dlib")  # no face: not recognised
    assert opencv.score(_noise(150, 150)[None], faces["hopper"][None], None, CTX, "hopper") == 0.0


def test_recognition_needs_a_gallery_of_two_identities(tmp_path, gallery):
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceRecognition

    with pytest.raises(ParamError, match="gallery=FOLDER is required"):
        _metric(DeepFaceRecognition)
    lines = (gallery / "metadata.jsonl").read_text().splitlines()[:1]
    (gallery / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="needs at least 2 identities"):
        _metric(DeepFaceRecognition, gallery=str(gallery)).check_domain(None)


# ------------------------------------------------------------------------------------- local weights
def _random_facenet512(path, seed):
    import torch
    from deepface.models.facial_recognition.pytorch.Facenet import InceptionResNetV1

    torch.manual_seed(seed)
    torch.save(InceptionResNetV1(dimension=512).state_dict(), path)
    return path


def test_facenet512_loads_the_local_file_through_deepfaces_own_loader(tmp_path, faces):
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceDistance

    first = _random_facenet512(tmp_path / "mine-a.pth", 0)
    second = _random_facenet512(tmp_path / "mine-b.pth", 1)
    a = _metric(DeepFaceDistance, model="Facenet512", weights=str(first), detector="skip")
    b = _metric(DeepFaceDistance, model="Facenet512", weights=str(second), detector="skip")
    (ea,) = a.embed(faces["hopper"][None], CTX)
    (eb,) = b.embed(faces["hopper"][None], CTX)
    assert ea.shape == eb.shape == (512,)
    assert not np.allclose(ea, eb)  # each metric scores with its own file, though deepface caches models by name
    (again,) = _metric(DeepFaceDistance, model="Facenet512", weights=str(first), detector="skip").embed(
        faces["astronaut"][None], CTX)
    assert again.shape == (512,)
    linked = list((tmp_path / "cache" / "deepface").glob("*/.deepface/weights/facenet512_weights.pth"))
    assert sorted(p.resolve() for p in linked) == sorted([first.resolve(), second.resolve()])
    assert a.fingerprint() != b.fingerprint()
    assert not (tmp_path / "home" / ".deepface").exists()  # never the user's home


def test_missing_weights_fail_before_any_work(tmp_path):
    from advbench.cells import PluginSpec
    from advbench.validation import check_input_paths, domain_metrics
    from advbench_plugins.realmetrics.deepface_metrics import DeepFaceDistance, _deepface

    with pytest.raises(ParamError, match="model Facenet512 needs weights=PATH: deepface's facenet512_weights.pth"):
        _metric(DeepFaceDistance, model="Facenet512")
    with pytest.raises(ParamError, match=r"must be a \.pth or \.onnx file"):
        _metric(DeepFaceDistance, model="ArcFace", weights="arcface_weights.h5")
    with pytest.raises(ParamError, match="detector yunet needs detector_weights=FOLDER"):
        _metric(DeepFaceDistance, detector="yunet")
    empty = tmp_path / "detectors"
    empty.mkdir()
    with pytest.raises(DataError, match="needs face_detection_yunet_2023mar.onnx in detector_weights"):
        _metric(DeepFaceDistance, detector="yunet", detector_weights=str(empty)).check_domain(None)
    with pytest.raises(DataError, match="does not exist"):
        check_input_paths(_metric(DeepFaceDistance, model="Facenet512", weights=str(tmp_path / "no.pth")))
    # through the validation every cell runs first: the folder domain's metric_args reach the metric
    domain = PluginSpec("domain", "folder", {"data": "d", "model": "m", "illegal": "a", "primary_metric": "deepface",
                                             "metric_args": f"deepface.model=ArcFace,deepface.weights={tmp_path}/x.pth"
                                             }).build()
    with pytest.raises(DataError, match="weights file .*x.pth of model ArcFace not found"):
        domain_metrics(domain)
    # deepface's own downloader refuses too (a detector whose file is absent)
    with _deepface(tmp_path / "df", None, "k", ()) as deepface, pytest.raises(DataError, match="never downloads"):
        deepface.build_model("yunet", task="face_detector")


def test_registered_with_directions_and_every_parameter_shown():
    import dataclasses

    from click.testing import CliRunner

    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    _attach_commands()
    flags = {"deepface": (False, True), "deepface-recognition": (True, True), "clean-fid": (False, True),
             "clean-kid": (False, True)}
    for name, (higher, refs) in flags.items():
        cls = plugins.get("metric", name)
        assert (cls.higher_is_better, cls.needs_references) == (higher, refs), name
        shown = CliRunner().invoke(cli, ["show", "metric", name], catch_exceptions=False, terminal_width=200)
        assert shown.exit_code == 0, shown.output
        missing = [f.name for f in dataclasses.fields(cls.Params) if f.name not in shown.output]
        assert missing == [], (name, missing)
