"""FID and KID through clean-fid (0.1.35), with the Inception network read from a local file (never downloaded).

- ``clean-fid``: Fréchet distance between Gaussian fits of the generated and the reference images' Inception
  features (``cleanfid.fid.fid_from_feats`` → ``frechet_distance``); lower is better (a closer forgery).
- ``clean-kid``: kernel inception distance, clean-fid's ``kernel_distance`` (cubic polynomial kernel, averaged
  over ``num_subsets`` random subsets of min(generated, references, ``max_subset_size``) images each); lower is
  better. clean-fid draws the subsets from numpy's global generator: advbench seeds it with ``seed`` and restores
  its state afterwards, so a score is reproducible and nothing else's randomness moves.

Features follow clean-fid's folder protocol exactly: every image goes through ``cleanfid.fid.get_files_features``
(its ``ResizeDataset``: ``mode=clean`` resizes with PIL bicubic to 299×299 *without* quantising back to uint8;
``legacy_tensorflow`` resizes inside the network as the original TensorFlow FID did), then through clean-fid's
``InceptionV3W`` wrapper of the TorchScript Inception ``inception-2015-12-05.pt``. The images are handed over as
lossless ``.npy`` files, so a score equals ``cleanfid.fid.compute_fid(folder_a, folder_b,
custom_feat_extractor=...)`` on PNGs of the same images (tested).

:func:`frechet` and :func:`kid` are also what the tiny world's ``fid`` / ``kid`` judges compute on their own
features (advbench_plugins.world.metrics). Per-class FID on a few dozen images is rank-deficient (fewer images
than feature dimensions: scipy warns that the covariance product is singular; those warnings are silenced) and
biased upwards; KID is unbiased and the better of the two at that size.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from advbench.errors import DataError
from advbench.interfaces import Metric
from advbench.params import check, param

from ._common import ContentMemo, check_images, link_into

INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads from its folder
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
DEFAULT_INCEPTION = f"models/clean-fid/{INCEPTION_FILE}"


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """clean-fid's Fréchet distance between Gaussian fits of two feature sets (N×D, M×D; N, M >= 2)."""
    from cleanfid.fid import fid_from_feats

    with warnings.catch_warnings():  # singular covariances (N < D) and clean-fid's scipy `disp` argument
        warnings.simplefilter("ignore")
        return float(fid_from_feats(np.asarray(a), np.asarray(b)))


def kid(a: np.ndarray, b: np.ndarray, seed: int = 0, num_subsets: int = 100, max_subset_size: int = 1000) -> float:
    """clean-fid's kernel distance of two feature sets, its random subsets drawn from ``seed``.

    With as many generated as reference features (and at most ``max_subset_size``) every subset is a permutation
    of all of them, so the value is the complete unbiased MMD² estimate; otherwise it is clean-fid's average over
    ``num_subsets`` random subsets of the larger set.
    """
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(np.asarray(a), np.asarray(b), num_subsets=num_subsets,
                                     max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def complete_kid(a: np.ndarray, b: np.ndarray) -> float:
    """The complete unbiased MMD² with clean-fid's kernel (cubic polynomial, k(x, y) = (x·y/d + 1)³) over every
    pair: the value :func:`kid`'s random subsets average to. With as many features on both sides it equals
    :func:`kid` (to 1e-9); with unequal sizes (the world scores 16 generated against 8 references) clean-fid
    subsamples the larger set to the smaller one's size, which discards half the generated images and adds
    1.5 % (median) to 17 % subset noise, so the tiny world's ``kid`` uses this estimator instead."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d, m, n = a.shape[1], len(a), len(b)
    kaa, kbb, kab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def missing_message(who: str, path: str) -> str:
    return (f"{who}: Inception weights {path} not found; download {INCEPTION_URL} to that path (clean-fid's "
            f"TorchScript Inception), or set the metric parameter inception=PATH")


@functools.lru_cache(maxsize=2)
def load_inception(path: str, device: str = "cpu", legacy_tensorflow: bool = False):
    """clean-fid's ``InceptionV3W`` from a local file, in eval mode on ``device`` (``download=False``: a missing
    file is an error, never a download). A file under another name is linked into advbench's cache folder under
    the name clean-fid loads."""
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    from advbench.cache import default_cache_dir

    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise DataError(missing_message("clean-fid", path))
    folder = source.parent
    if source.name != INCEPTION_FILE:
        folder = default_cache_dir() / "clean-fid" / hashlib.sha256(str(source).encode()).hexdigest()[:16]
        link_into(folder, INCEPTION_FILE, source)
    try:
        model = InceptionV3W(str(folder), download=False, resize_inside=legacy_tensorflow)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"clean-fid: {path} is not clean-fid's TorchScript Inception ({first}); download "
                        f"{INCEPTION_URL}") from None
    return model.to(torch.device(device)).eval()


_FEATURES = ContentMemo(size=64)  # FID and KID of one class look at the same two image sets


def inception_features(images: np.ndarray, inception: str, mode: str = "clean", device: str = "cpu",
                       batch_size: int = 32) -> np.ndarray:
    """N×2048 float32 Inception features of uint8 N×H×W×3 images by clean-fid's own loader, as clean-fid's
    compute_fid/compute_kid get them (memoised by content)."""

    def compute(images: np.ndarray) -> np.ndarray:
        import tempfile

        import torch
        from cleanfid.fid import get_files_features

        model = load_inception(inception, device, mode == "legacy_tensorflow")
        with tempfile.TemporaryDirectory(prefix="advbench-cleanfid-") as tmp:
            files = []
            for i, image in enumerate(images):
                files.append(str(Path(tmp) / f"{i:06d}.npy"))
                np.save(files[-1], np.ascontiguousarray(image))
            return get_files_features(files, model, num_workers=0, batch_size=batch_size,
                                      device=torch.device(device), mode=mode, verbose=False)

    return _FEATURES.get((inception, mode, device, batch_size), check_images(images), compute)


@dataclass(frozen=True)
class CleanFidParams:
    inception: str = param(DEFAULT_INCEPTION, f"Local clean-fid Inception file ({INCEPTION_FILE}, from "
                                              f"{INCEPTION_URL}); never downloaded.", path=True)
    mode: Literal["clean", "legacy_tensorflow"] = param(
        "clean", "clean-fid's resize protocol: clean (PIL bicubic to 299, no quantisation) or legacy_tensorflow "
                 "(the original TensorFlow FID's resize inside the network).")
    batch_size: int = param(32, "Images per Inception batch.")

    def __post_init__(self):
        check(bool(self.inception), f"inception must be the path of a local {INCEPTION_FILE}")
        check(self.batch_size >= 1, "batch_size must be >= 1")


@dataclass(frozen=True)
class CleanKidParams(CleanFidParams):
    num_subsets: int = param(100, "KID: random subsets averaged (clean-fid's default).")
    max_subset_size: int = param(1000, "KID: largest subset (clean-fid's default).")
    seed: int = param(0, "KID: seed of the random subsets.")

    def __post_init__(self):
        super().__post_init__()
        check(self.num_subsets >= 1, "num_subsets must be >= 1")
        check(self.max_subset_size >= 2, "max_subset_size must be >= 2")


class _CleanFidMetric(Metric):
    measures = "fidelity"
    higher_is_better = False
    needs_references = True
    min_images = min_references = 2  # a covariance needs two samples; KID divides by m(m-1)

    def features(self, images: np.ndarray, references: np.ndarray, ctx) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        if references is None or len(references) < 2 or len(check_images(images)) < 2:
            raise ValueError(f"{self.name} needs at least 2 generated and 2 reference images")
        if not Path(p.inception).expanduser().is_file():
            raise DataError(missing_message(self.name, p.inception))
        return (inception_features(images, p.inception, p.mode, ctx.device, p.batch_size),
                inception_features(check_images(references, "references"), p.inception, p.mode, ctx.device,
                                   p.batch_size))

    def fingerprint(self) -> str | None:
        from advbench.cache import file_sha256

        path = Path(self.params.inception).expanduser()
        return file_sha256(path) if path.is_file() else None


class CleanFID(_CleanFidMetric):
    """clean-fid's FID between the generated and the reference images (local Inception weights; lower better)."""

    Params = CleanFidParams

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        return frechet(*self.features(images, references, ctx))


class CleanKID(_CleanFidMetric):
    """clean-fid's KID between the generated and the reference images (local Inception weights; lower better)."""

    Params = CleanKidParams

    def score(self, images, references, prompts, ctx, cls=None) -> float:
        p = self.params
        return kid(*self.features(images, references, ctx), p.seed, p.num_subsets, p.max_subset_size)
