"""FID and KID through clean-fid: the tiny world's judges on clean-fid's functions, and the real-image metrics
with clean-fid's own loader and Inception wrapper on a tiny TorchScript stand-in saved to a temp file.

Tolerances (the hand-written Fréchet distance / KID the world used before live on here as the reference):
- FID: clean-fid's ``frechet_distance`` (scipy ``sqrtm``) equals the eigenvalue form within 1e-6 relative (on
  the 713 generated-vs-reference class sets of a benchmark grid's stage cache: at most 5.7e-8).
- KID: with as many generated as reference images, clean-fid's ``kernel_distance`` *is* the complete unbiased
  MMD² estimate (every subset is a permutation of all images): equal within 1e-9 relative. With more generated
  than reference images (the world: 16 vs 8) it averages 100 random subsets, whose mean is that estimate: on the
  same 713 sets the two differed by 1.5 % (median) and 17 % (max) relative, 3.6e-4 / 6.7e-3 absolute; with
  4000 subsets they agree within 2 %.
"""

import socket

import numpy as np
import pytest

from advbench.errors import DataError, ParamError
from advbench.interfaces import Context
from advbench.params import build_params

CTX = Context(progress=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _metric(cls, **values):
    return cls(build_params(cls.Params, values, f"metric {cls.__name__}"))


# ------------------------------------------------------------------------- the reference implementation
def reference_fid(a, b):
    """The world's Fréchet distance before clean-fid: tr sqrt(Σa Σb) from the eigenvalues of Σa Σb."""
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.clip(np.real(np.linalg.eigvals(ca @ cb)), 0, None)
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(eig).sum())


def reference_kid(a, b):
    """The world's KID before clean-fid: the complete unbiased MMD² with the cubic polynomial kernel."""
    d = a.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * k(a, b).mean())


@pytest.fixture(scope="module")
def world_sets():
    """(generated-like, reference-like) alignment-judge features of world classes: 16 vs 8 images, as a default
    world cell scores (2 prompts × 8 images against 8 held-out references), same class and another class."""
    from advbench_plugins.world.generators import get_generator
    from advbench_plugins.world.metrics import align_features

    out = []
    for domain in ("portraits", "artworks", "explicit"):
        gen = get_generator(domain)
        a, b = gen.benchmark_classes[:2]
        for ref_cls in (a, b):
            out.append((align_features(gen.images(a, 16, start=500)), align_features(gen.images(ref_cls, 8))))
    return out


def test_clean_fid_equals_the_hand_written_frechet_distance(world_sets):
    from advbench_plugins.realmetrics.fid import frechet

    for g, r in world_sets:
        assert frechet(g, r) == pytest.approx(reference_fid(g, r), rel=1e-6)
        assert frechet(g[:8], r) == pytest.approx(reference_fid(g[:8], r), rel=1e-6)


def test_clean_kid_equals_the_complete_estimate_with_equal_sizes_and_on_average_otherwise(world_sets):
    from advbench_plugins.realmetrics.fid import complete_kid, kid

    for g, r in world_sets:
        assert kid(g[:8], r) == pytest.approx(reference_kid(g[:8], r), rel=1e-9)
        assert complete_kid(g[:8], r) == pytest.approx(kid(g[:8], r), rel=1e-9)
        full = reference_kid(g, r)
        assert complete_kid(g, r) == pytest.approx(full, rel=1e-12)  # bit-for-bit what the world scored before
        assert kid(g, r, num_subsets=4000) == pytest.approx(full, rel=0.02, abs=1e-4)


def test_kid_subsets_are_seeded_and_leave_numpy_alone(world_sets):
    from advbench_plugins.realmetrics.fid import kid

    g, r = world_sets[0]
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    assert kid(g, r, seed=0) == kid(g, r, seed=0) != kid(g, r, seed=1)
    assert np.random.rand() == expected_next  # the global generator's state is restored


def test_world_fid_and_kid_metrics_use_clean_fid_on_judge_features():
    from advbench_plugins.realmetrics.fid import complete_kid, frechet
    from advbench_plugins.world.generators import get_generator
    from advbench_plugins.world.metrics import FID, KID, align_features

    gen = get_generator("portraits")
    images, refs = gen.images(gen.illegal[0], 16, start=700), gen.images(gen.illegal[0], 8)
    g, r = align_features(images), align_features(refs)
    assert _metric(FID).score(images, refs, None, CTX) == frechet(g, r)
    assert _metric(KID).score(images, refs, None, CTX) == complete_kid(g, r) == pytest.approx(reference_kid(g, r),
                                                                                              rel=1e-12)


# -------------------------------------------------------------------------- real images, local Inception
def save_tiny_inception(path):
    """A TorchScript module with the interface clean-fid's InceptionV3W uses (``layers`` → N×2048×1×1 features of
    299×299 inputs in [-1, 1]; ``forward(x, return_features=True)`` resizes inside), randomly initialised."""
    import torch
    import torch.nn.functional as F

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 2048, kernel_size=1)

        def forward(self, x):
            return F.adaptive_avg_pool2d(torch.relu(self.proj(F.avg_pool2d(x, 13))), 1)

    class TinyInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            return self.layers((x - 128) / 128)

    torch.manual_seed(0)
    torch.jit.script(TinyInception()).save(str(path))
    return path


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return save_tiny_inception(tmp_path_factory.mktemp("inception") / "tiny-inception.pt")


@pytest.fixture(scope="module")
def photos():
    """Nine real photos from scikit-image at 64×64: six 'generated', five 'references' (two shared)."""
    from PIL import Image
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "moon", "horse")
    out = []
    for name in names:
        image = np.asarray(getattr(data, name)())
        image = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]
        out.append(np.asarray(Image.fromarray(image.astype(np.uint8)).resize((64, 64), Image.BICUBIC)))
    return np.stack(out[:6]), np.stack(out[4:])


def _folder(root, images):
    from PIL import Image

    root.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    return str(root)


def test_clean_kid_equals_clean_fids_folder_pipeline_on_pngs(inception, photos, tmp_path):
    """Features through advbench equal clean-fid's own folder pipeline (PNG files, its resize, its wrapper)."""
    import torch
    from cleanfid.fid import get_folder_features, kernel_distance

    from advbench_plugins.realmetrics.fid import CleanKID, inception_features, load_inception

    generated, references = photos
    for mode in ("clean", "legacy_tensorflow"):
        model = load_inception(str(inception), "cpu", mode == "legacy_tensorflow")
        theirs = [get_folder_features(_folder(tmp_path / f"{mode}-{name}", images), model, num_workers=0,
                                      device=torch.device("cpu"), mode=mode, verbose=False)
                  for name, images in (("gen", generated), ("ref", references))]
        ours = inception_features(generated, str(inception), mode), inception_features(references, str(inception),
                                                                                       mode)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape == (len(b), 2048)
            np.testing.assert_array_equal(a, b)
        np.random.seed(0)
        expected = kernel_distance(*theirs)
        assert _metric(CleanKID, inception=str(inception), mode=mode).score(generated, references, None, CTX) == \
            expected
    # the file is linked under the name clean-fid loads, inside advbench's cache, never downloaded
    assert list((tmp_path / "cache" / "clean-fid").glob("*/inception-2015-12-05.pt"))


@pytest.mark.slow  # two 2048×2048 matrix square roots: 30–60 s each on one core
def test_clean_fid_equals_compute_fid_on_folders(inception, photos, tmp_path):
    import torch
    from cleanfid.fid import compute_fid

    from advbench_plugins.realmetrics.fid import CleanFID, load_inception

    generated, references = photos
    model = load_inception(str(inception), "cpu")
    expected = compute_fid(_folder(tmp_path / "gen", generated), _folder(tmp_path / "ref", references),
                           custom_feat_extractor=model, mode="clean", num_workers=0, device=torch.device("cpu"),
                           verbose=False)
    assert _metric(CleanFID, inception=str(inception)).score(generated, references, None, CTX) == \
        pytest.approx(expected, rel=1e-6)


def test_missing_or_wrong_inception_fails_with_the_download_url(tmp_path, photos):
    from advbench.validation import check_input_paths
    from advbench_plugins.realmetrics.fid import INCEPTION_URL, CleanFID, CleanKID

    generated, references = photos
    missing = _metric(CleanFID)  # the default path, absent here
    with pytest.raises(DataError, match="does not exist"):
        check_input_paths(missing)  # what validation runs before any work
    with pytest.raises(DataError, match=f"not found; download {INCEPTION_URL}"):
        missing.score(generated, references, None, CTX)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript file")
    with pytest.raises(DataError, match="is not clean-fid's TorchScript Inception"):
        _metric(CleanKID, inception=str(junk)).score(generated, references, None, CTX)
    with pytest.raises(ParamError, match="num_subsets must be >= 1"):
        _metric(CleanKID, num_subsets=0)
    with pytest.raises(ValueError, match="at least 2 generated and 2 reference images"):
        _metric(CleanKID, inception=str(junk)).score(generated[:1], references, None, CTX)
