"""Face identity through deepface (0.0.103, no TensorFlow), with weights from local files only.

FreezeAsGuard judges portrait forgeries with DeepFace (FaceNet-512). Here every face goes through
``DeepFace.represent(image, model_name=model, detector_backend=detector, align=align, max_faces=1)``: the largest
detected face, aligned, embedded by ``model``. An image in which the detector finds no face has no embedding.

- ``deepface`` (lower is better: a closer forgery): mean over generated images of a per-image distance to the
  class's reference embeddings (deepface's ``find_distance``: ``cosine`` by default, ``euclidean``,
  ``euclidean_l2``, ``angular``), reduced over the references as ``face-distance`` does (``pairs``: mean over
  every reference, ``mean``: to the mean reference embedding, ``nearest``). A generated image without a face
  counts as ``no_face_distance`` (default: an orthogonal embedding's distance, see :func:`no_face_default`).
- ``deepface-recognition`` (higher is better): share of generated images whose nearest identity, among the
  classes of the ``gallery`` image folder plus the target class (whose gallery entries are the held-out
  references the runner passes), is the target (top-1; per class the ``reduce`` distance, default the distance
  to its mean embedding, as the tiny world's recognition uses prototypes). No face: not recognised.

Weights. deepface loads weights only from ``$DEEPFACE_HOME/.deepface/weights`` under fixed names and downloads
what is missing. advbench points ``DEEPFACE_HOME`` (only while it calls deepface) at a folder of its cache,
``<cache>/deepface/<key>`` (``--cache-dir`` / ``$ADVBENCH_CACHE``, default ``.advbench_cache``; never the user's
home), links the needed files into it under deepface's names, checks them before any work, and makes deepface's
downloader raise instead of downloading. ``Dlib`` (and the ``dlib`` detector's landmarks) use the files the PyPI
package ``face_recognition_models`` ships; every other model needs ``weights``: deepface's PyTorch ``.pth`` or
ONNX ``.onnx`` file of that model (the suffix picks deepface's backend engine; TensorFlow ``.h5`` files are not
supported). ``opencv`` uses the Haar cascades of ``opencv-contrib-python-headless``; ``yunet``, ``centerface`` and
``ssd`` need their files in ``detector_weights``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from advbench.errors import DataError
from advbench.interfaces import Metric
from advbench.params import check, param

from ._common import ContentMemo, check_images, link_into

# deepface 0.0.103's weight file name of each model, without the suffix that names the engine (.pth / .onnx)
MODEL_STEMS = {"Facenet512": "facenet512_weights", "Facenet": "facenet_weights", "ArcFace": "arcface_weights",
               "VGG-Face": "vgg_face_weights", "OpenFace": "openface_weights", "DeepID": "deepid_weights",
               "DeepFace": "VGGFace2_DeepFace_weights_val-0.9034", "GhostFaceNet": "ghostfacenet_v1"}
SFACE_FILE = "face_recognition_sface_2021dec.onnx"  # OpenCV's SFace: ONNX whatever the engine
ENGINES = {".pth": "pytorch", ".onnx": "onnx"}
DETECTOR_FILES = {"opencv": (), "dlib": ("shape_predictor_5_face_landmarks.dat",), "skip": (),
                  "yunet": ("face_detection_yunet_2023mar.onnx",), "centerface": ("centerface.onnx",),
                  "ssd": ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel")}
CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml")
Model = Literal["Dlib", "Facenet512", "Facenet", "ArcFace", "VGG-Face", "OpenFace", "DeepID", "DeepFace",
                "GhostFaceNet", "SFace"]
Detector = Literal["opencv", "dlib", "skip", "yunet", "centerface", "ssd"]
_INSTALL = "pip install deepface==0.0.103 werkzeug face_recognition_models dlib-bin (or 'advbench[real]')"


def weight_sources(model: str, weights: str, detector: str, detector_weights: str) -> dict[str, Path]:
    """deepface's file name → the local file to load it from, for the model and the detector; a missing one is a
    DataError naming it and where it goes."""
    from .faces import model_files

    out: dict[str, Path] = {}
    if model == "Dlib" and not weights:
        out["dlib_face_recognition_resnet_model_v1.dat"] = model_files()["resnet"]
    elif weights:
        path = Path(weights).expanduser()
        name = ("dlib_face_recognition_resnet_model_v1.dat" if model == "Dlib" else SFACE_FILE if model == "SFace"
                else MODEL_STEMS[model] + path.suffix)
        if not path.is_file():
            raise DataError(f"deepface: weights file {weights} of model {model} not found; put deepface's {name} "
                            f"there (see docs/metrics.md), or set the metric parameter weights=PATH")
        out[name] = path
    if detector == "dlib":
        out[DETECTOR_FILES["dlib"][0]] = model_files()["shape5"]
    elif DETECTOR_FILES[detector]:
        folder = Path(detector_weights).expanduser()
        for name in DETECTOR_FILES[detector]:
            if not (folder / name).is_file():
                raise DataError(f"deepface: detector {detector} needs {name} in detector_weights={detector_weights}"
                                f"; put deepface's file there, or use detector=opencv, dlib or skip")
            out[name] = folder / name
    if detector == "opencv":
        import cv2

        missing = [n for n in CASCADES if not (Path(cv2.__file__).parent / "data" / n).is_file()]
        if missing:
            raise DataError(f"deepface: detector opencv needs OpenCV's {missing[0]}, which this OpenCV does not "
                            f"ship; pip install opencv-contrib-python-headless, or use detector=dlib or skip")
    return out


def no_face_default(model: str, distance: str) -> float:
    """The distance of an orthogonal embedding (cosine 1, angular 0.5, euclidean_l2 √2); for raw ``euclidean``,
    whose scale depends on the model, twice deepface's same-person threshold."""
    if distance == "euclidean":
        from deepface.modules.verification import find_threshold

        return 2.0 * find_threshold(model, "euclidean")
    return {"cosine": 1.0, "angular": 0.5, "euclidean_l2": float(np.sqrt(2.0))}[distance]


_LOADED: dict[tuple[str, str], str] = {}  # (deepface task, model name) -> the weights key it was built from


@contextlib.contextmanager
def _deepface(home: Path, engine: str | None, key: str, builds: tuple[tuple[str, str], ...]):
    """deepface's public module with ``DEEPFACE_HOME`` (and the backend engine) set for the duration, its
    downloader refusing to download, and models built from other weights dropped from its model cache."""
    import warnings

    env = {"DEEPFACE_HOME": str(home), **({"DEEPFACE_BACKEND_ENGINE": engine} if engine else {})}
    saved = {k: os.environ.get(k) for k in (*env, "DEEPFACE_LOG_LEVEL")}
    os.environ.update(env)
    os.environ.setdefault("DEEPFACE_LOG_LEVEL", "30")  # its info lines ("Directory ... created") are noise here
    try:
        try:
            with warnings.catch_warnings():  # DeepFace's import switches every Python warning off
                from deepface import DeepFace
                from deepface.commons import backend_utils, weight_utils
                from deepface.modules import modeling
        except ImportError as exc:
            raise DataError(f"deepface metrics need {exc.name or exc}: {_INSTALL}") from None
        _refuse_downloads(weight_utils)
        if engine and backend_utils._backend_engine not in (None, engine):
            backend_utils._backend_engine = None  # deepface remembers its first engine; take the one asked for
        for task, name in builds:
            if _LOADED.get((task, name)) != key:
                getattr(modeling, "cached_models", {}).get(task, {}).pop(name, None)
                _LOADED[(task, name)] = key
        yield DeepFace
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _refuse_downloads(weight_utils) -> None:
    """Make deepface's downloader raise a DataError for a missing file instead of fetching it."""
    original = weight_utils.download_weights_if_necessary
    if getattr(original, "advbench_guard", False):
        return

    @functools.wraps(original)
    def guarded(file_name, source_url, compress_type=None):
        from deepface.commons import folder_utils

        target = Path(folder_utils.get_deepface_home()) / ".deepface" / "weights" / file_name
        if not target.is_file():
            raise DataError(f"deepface wants {file_name}, which advbench never downloads; put it in "
                            f"{target.parent} or pass it as a metric parameter (see docs/metrics.md)")
        return original(file_name, source_url, compress_type)

    guarded.advbench_guard = True
    weight_utils.download_weights_if_necessary = guarded


_EMBEDDINGS = ContentMemo()


@dataclass(frozen=True)
class DeepFaceParams:
    model: Model = param("Dlib", "deepface recognition model (Dlib: weights shipped in face_recognition_models; "
                                 "others need weights).")
    weights: str = param("", "Local weights file of model: deepface's PyTorch .pth or ONNX .onnx file (e.g. "
                              "facenet512_weights.pth); empty for Dlib's shipped one.", path=True)
    detector: Detector = param("opencv", "deepface face detector (opencv, dlib, skip work offline out of the "
                                         "box; yunet, centerface, ssd need detector_weights).")
    detector_weights: str = param("", "Folder holding the detector's files under deepface's names (yunet, "
                                       "centerface, ssd).", path=True)
    align: bool = param(True, "Align each face on its eyes before embedding (deepface's align).")
    distance: Literal["cosine", "euclidean", "euclidean_l2", "angular"] = param(
        "cosine", "deepface distance between embeddings.")
    reduce: Literal["pairs", "mean", "nearest"] = param(
        "pairs", "Per generated face: mean distance to all reference faces, to their mean embedding, or the nearest.")

    def __post_init__(self):
        if self.model != "Dlib":
            wanted = SFACE_FILE if self.model == "SFace" else f"{MODEL_STEMS[self.model]}.pth (or .onnx)"
            check(bool(self.weights), f"model {self.model} needs weights=PATH: deepface's {wanted}, which advbench "
                                      f"never downloads")
        if self.weights and self.model != "Dlib":
            allowed = (".onnx",) if self.model == "SFace" else tuple(ENGINES)
            check(Path(self.weights).suffix in allowed,
                  f"weights of {self.model} must be a {' or '.join(allowed)} file (deepface's PyTorch or ONNX "
                  f"weights), not {self.weights}")
        needs = DETECTOR_FILES[self.detector]
        check(not needs or self.detector == "dlib" or bool(self.detector_weights),
              f"detector {self.detector} needs detector_weights=FOLDER with {', '.join(needs)}")


class _DeepFaceMetric(Metric):
    """Shared by both deepface metrics: local weights, embeddings, distances."""

    Params = DeepFaceParams

    def sources(self) -> dict[str, Path]:
        """The local weight files (see :func:`weight_sources`), once deepface is known to be installed."""
        import importlib.util

        missing = [m for m in ("deepface", "werkzeug") if importlib.util.find_spec(m) is None]
        if missing:
            raise DataError(f"the deepface metrics need {missing[0]}: {_INSTALL}")
        p = self.params
        return weight_sources(p.model, p.weights, p.detector, p.detector_weights)

    def check_domain(self, domain) -> str | None:
        self.sources()  # deepface installed and every weights file present, before any work (else a DataError)
        return None

    def fingerprint(self) -> str:
        from importlib.metadata import version

        from advbench.cache import file_sha256

        files = sorted((name, file_sha256(path)) for name, path in self.sources().items())
        return hashlib.sha256(repr((version("deepface"), files)).encode()).hexdigest()

    def embed(self, images: np.ndarray, ctx, what: str = "images") -> list[np.ndarray | None]:
        """The embedding of the largest face of each image (None where the detector finds none)."""
        from advbench.cache import default_cache_dir, stable_hash

        p = self.params
        sources = self.sources()
        key = stable_hash(sorted((n, str(s.resolve()), s.stat().st_size, s.stat().st_mtime_ns)
                                 for n, s in sources.items()))
        home = Path(ctx.cache_dir or default_cache_dir()) / "deepface" / key[:16]
        for name, source in sources.items():
            link_into(home / ".deepface" / "weights", name, source)
        engine = ENGINES.get(Path(p.weights).suffix) if p.model not in ("Dlib", "SFace") else None
        builds = (("facial_recognition", p.model), ("face_detector", p.detector))
        with _deepface(home, engine, key, builds) as deepface:
            from deepface.modules.exceptions import FaceNotDetected

            def compute(image: np.ndarray) -> np.ndarray | None:
                try:
                    found = deepface.represent(np.ascontiguousarray(image[..., ::-1]), model_name=p.model,
                                               detector_backend=p.detector, align=p.align, max_faces=1)
                except FaceNotDetected:
                    return None
                return np.asarray(found[0]["embedding"], dtype=np.float64)

            settings = (key, p.model, p.detector, p.align)
            return [_EMBEDDINGS.get(settings, image, compute) for image in check_images(images, what)]

    def distances(self, faces: list[np.ndarray], references: np.ndarray) -> np.ndarray:
        """N×M deepface distances (or N×1 to the references' mean embedding) reduced to one per face."""
        from deepface.modules.verification import find_distance

        refs = references.mean(0, keepdims=True) if self.params.reduce == "mean" else references
        d = np.asarray(find_distance(refs, np.stack(faces), self.params.distance), dtype=np.float64)
        return d.min(1) if self.params.reduce == "nearest" else d.mean(1)

    def reference_faces(self, references: np.ndarray | None, ctx, cls: str | None) -> np.ndarray:
        if references is None or not len(references):
            raise DataError(f"{self.name} needs reference images of class {cls!r}; none were given")
        found = [e for e in self.embed(references, ctx, "references") if e is not None]
        if not found:
            raise DataError(f"{self.name}: detector {self.params.detector} found no face in any of the "
                            f"{len(references)} reference images of class {cls!r}; use references showing a face")
        return np.stack(found)


@dataclass(frozen=True)
class DistanceParams(DeepFaceParams):
    no_face_distance: float | None = param(
        None, "Distance counted for a generated image without a face (default: an orthogonal embedding's: "
              "cosine 1, angular 0.5, euclidean_l2 1.414; euclidean: twice deepface's threshold).")

    def __post_init__(self):
        super().__post_init__()
        check(self.no_face_distance is None or self.no_face_distance >= 0, "no_face_distance must be >= 0")


class DeepFaceDistance(_DeepFaceMetric):
    """Mean deepface distance of generated faces to the class's reference faces (lower is better)."""

    measures = "identity"
    higher_is_better = False
    needs_references = True
    Params = DistanceParams

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        p = self.params
        if not len(check_images(images)):
            raise ValueError("deepface needs at least one generated image")
        refs = self.reference_faces(references, ctx, cls)
        generated = self.embed(images, ctx)
        faces = [g for g in generated if g is not None]
        ctx.log(f"deepface {cls}: faces in {len(faces)}/{len(generated)} generated and {len(refs)}/"
                f"{len(references)} reference images")
        penalty = no_face_default(p.model, p.distance) if p.no_face_distance is None else p.no_face_distance
        out = np.full(len(generated), float(penalty))
        if faces:
            out[[i for i, g in enumerate(generated) if g is not None]] = self.distances(faces, refs)
        return float(out.mean())


@functools.lru_cache(maxsize=4)
def load_gallery(folder: str):
    """The gallery image folder (every image verified once per process), with at least two identities."""
    from advbench.data import ImageFolderDataset

    dataset = ImageFolderDataset(folder)
    if len(dataset.classes()) < 2:
        raise DataError(f"deepface-recognition: gallery {folder} has {len(dataset.classes())} class; it needs at "
                        f"least 2 identities to tell apart")
    return dataset


@dataclass(frozen=True)
class RecognitionParams(DeepFaceParams):
    gallery: str = param("", "Image folder with metadata.jsonl (file_name, text, class) whose classes are the "
                              "candidate identities (e.g. the domain's data folder); required.", path=True)
    reduce: Literal["pairs", "mean", "nearest"] = param(
        "mean", "Distance of a face to a class: to its mean embedding, mean over its faces, or the nearest.")

    def __post_init__(self):
        super().__post_init__()
        check(bool(self.gallery), "gallery=FOLDER is required: an image folder with metadata.jsonl whose classes "
                                  "are the identities a generated face is told apart from")


class DeepFaceRecognition(_DeepFaceMetric):
    """Share of generated faces whose nearest gallery identity is the target class (top-1; higher is better)."""

    measures = "identity"
    recognition = True
    higher_is_better = True
    needs_references = True
    Params = RecognitionParams

    def gallery(self):
        return load_gallery(self.params.gallery)

    def check_domain(self, domain) -> str | None:
        self.gallery()
        return super().check_domain(domain)

    def fingerprint(self) -> str:
        from advbench.cache import file_sha256

        dataset = self.gallery()
        files = [file_sha256(Path(self.params.gallery) / "metadata.jsonl")]
        files += [file_sha256(e.path) for c in dataset.classes() for e in dataset.examples(c)]
        return hashlib.sha256(repr((super().fingerprint(), files)).encode()).hexdigest()

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        if cls is None:
            raise ValueError("deepface-recognition needs the class the images were generated for")
        dataset = self.gallery()
        candidates = {cls: self.reference_faces(references, ctx, cls)}
        for other in dataset.classes():
            if other != cls:
                pixels = [e.pixels() for e in dataset.examples(other)]
                found = [f for p in pixels for f in self.embed(p[None], ctx, "gallery") if f is not None]
                if not found:
                    raise DataError(f"deepface-recognition: detector {self.params.detector} found no face in "
                                    f"gallery class {other!r} of {self.params.gallery}; fix or remove that class")
                candidates[other] = np.stack(found)
        generated = self.embed(images, ctx)
        faces = [g for g in generated if g is not None]
        if not faces:
            return 0.0
        names = list(candidates)
        table = np.stack([self.distances(faces, candidates[c]) for c in names], axis=1)  # faces × classes
        return float(np.sum(table.argmin(1) == names.index(cls)) / len(generated))
