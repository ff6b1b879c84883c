"""LPIPS, DINO and CSD reference-similarity metrics, each loaded by its real code from random weights in a temp file.

Random weights say nothing about perception, so the assertions are those that hold for any weights: an image is
its own best match (LPIPS 0, cosine 1), an imperceptibly perturbed copy is closer than an unrelated photo
(continuity), and each metric equals its library's computation on the same weights. Photos: matplotlib's samples.
"""

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from advbench.errors import DataError, UserError
from advbench.interfaces import Context
from advbench.params import build_params

CTX = Context(progress=False)
TINY_CSD = {"embed_dim": 8, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def _metric(cls, **values):
    return cls(build_params(cls.Params, values, f"metric {cls.__name__}"))


def _photo(name, size):
    import matplotlib.cbook as cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data(name, asfileobj=False)) as img:
        return np.asarray(img.convert("RGB").resize(size))


@pytest.fixture(scope="module")
def photos():
    """(hopper, hopper with ±2 grey levels of noise, an unrelated photo), 64×64."""
    hopper = _photo("grace_hopper.jpg", (64, 64))
    noise = np.random.RandomState(0).randint(-2, 3, hopper.shape)
    nudged = np.clip(hopper.astype(int) + noise, 0, 255).astype(np.uint8)
    return hopper, nudged, _photo("Minduka_Present_Blue_Pack.png", (64, 64))


# ------------------------------------------------------------------------------------------ plugins
def test_registered_with_their_directions(temp_plugin):
    import advbench_plugins.realmetrics as realmetrics
    from advbench import plugins

    if not plugins.get_plugin_manager().is_registered(realmetrics):  # until the entry point is installed
        temp_plugin(realmetrics, "test-realmetrics")
    for name, higher in (("lpips", False), ("dino", True), ("csd", True)):
        cls = plugins.get("metric", name)
        assert (cls.higher_is_better, cls.needs_references, cls.needs_prompts) == (higher, True, False)


@pytest.mark.parametrize("name", ["lpips", "dino", "csd"])
def test_listed_and_every_parameter_documented(name):
    import dataclasses

    from advbench import plugins

    env = {**os.environ, "COLUMNS": "400"}
    advbench = str(Path(sys.executable).with_name("advbench"))  # the console script beside this Python, PATH or not
    listing = subprocess.run([advbench, "list"], capture_output=True, text=True, env=env, check=True).stdout
    assert f" {name} " in listing
    shown = subprocess.run([advbench, "show", "metric", name], capture_output=True, text=True, env=env,
                           check=True).stdout
    for field in dataclasses.fields(plugins.get("metric", name).Params):
        assert field.metadata["help"] and field.metadata["help"] in shown, field.name


# --------------------------------------------------------------------------------------------- lpips
@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    """(torchvision AlexNet features with random weights, their checkpoint in torchvision's key names)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features.eval()
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save({**state, "classifier.6.weight": torch.zeros(2, 2)}, path)  # a full checkpoint's head is ignored
    return features, str(path)


def test_lpips_equals_the_lpips_package_on_the_same_weights(alexnet, photos):
    import lpips
    import torch

    from advbench_plugins.realmetrics.perceptual import LpipsDistance

    features, path = alexnet
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # the wheel's linear layers
    for part in (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
                 reference.net.slice5):  # lpips keeps torchvision's features[i] in its slices: put ours there
        for index in list(part._modules):
            part._modules[index] = features[int(index)]
    hopper, nudged, other = photos
    with torch.inference_mode():
        expected = [float(reference(lpips.im2tensor(hopper), lpips.im2tensor(x))) for x in (hopper, nudged, other)]
    metric = _metric(LpipsDistance, backbone=path)
    got = [metric.score(hopper[None], x[None], None, CTX) for x in (hopper, nudged, other)]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[0] == pytest.approx(0.0, abs=1e-7) and 0 < got[1] < got[2]
    both = np.stack([nudged, other])
    assert metric.score(hopper[None], both, None, CTX) == pytest.approx((got[1] + got[2]) / 2, abs=1e-6)
    nearest = _metric(LpipsDistance, backbone=path, reduce="nearest", batch_size=1)
    assert nearest.score(np.stack([hopper, other]), both, None, CTX) == pytest.approx(got[1] / 2, abs=1e-6)


def test_lpips_weight_files_are_checked(alexnet, tmp_path):
    import torch

    from advbench_plugins.realmetrics.perceptual import LpipsDistance, shipped_linear

    image = np.zeros((1, 64, 64, 3), np.uint8)
    default = _metric(LpipsDistance)  # models/torchvision/alexnet-owt-7be5be79.pth, absent here
    message = default.check_domain(None)
    assert message.startswith("lpips: AlexNet backbone weights models/torchvision/alexnet-owt-7be5be79.pth not found")
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message and "\n" not in message
    with pytest.raises(DataError, match="AlexNet backbone weights .* not found"):
        default.score(image, image, None, CTX)
    with pytest.raises(DataError, match="not found"):
        default.fingerprint()
    assert _metric(LpipsDistance, backbone=alexnet[1]).check_domain(None) is None
    renamed = {k.replace("features.0.", "features.99."): v for k, v in torch.load(alexnet[1], weights_only=True).items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(DataError, match=rf"{tmp_path}/renamed.pth does not fit the AlexNet backbone.*2 missing keys"):
        _metric(LpipsDistance, backbone=str(tmp_path / "renamed.pth")).score(image, image, None, CTX)
    wrong = _metric(LpipsDistance, backbone=alexnet[1], linear=shipped_linear("squeeze"))
    with pytest.raises(DataError, match="squeeze.pth does not fit LPIPS alex linear layers"):
        wrong.score(image, image, None, CTX)


# ---------------------------------------------------------------------------------------------- dino
@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A checkpoint of timm's tiny test ViT (160 px) with random weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("dino") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def test_dino_similarity_of_an_image_to_itself_is_one(tiny_vit, photos):
    from advbench_plugins.realmetrics.similarity import DinoSimilarity

    hopper, nudged, other = photos
    metric = _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=tiny_vit, batch_size=2)
    emb = metric.embed(np.stack([hopper, nudged, other]), CTX)
    assert emb.shape == (3, 64) and np.linalg.norm(emb, axis=1) == pytest.approx(1.0)
    cos = emb @ emb.T
    assert metric.score(hopper[None], hopper[None], None, CTX) == pytest.approx(1.0, abs=1e-6)
    assert cos[0, 1] > cos[0, 2]  # an imperceptible change stays closer than another photo
    refs = np.stack([hopper, other])
    assert metric.score(hopper[None], refs, None, CTX) == pytest.approx((1 + cos[0, 2]) / 2, abs=1e-6)
    nearest = _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=tiny_vit, reduce="nearest")
    assert nearest.score(np.stack([hopper, nudged]), refs, None, CTX) == pytest.approx((1 + cos[1, 0]) / 2, abs=1e-6)
    centre = emb[[0, 2]].mean(0)
    mean = _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=tiny_vit, reduce="mean")
    assert mean.score(hopper[None], refs, None, CTX) == pytest.approx(emb[0] @ centre / np.linalg.norm(centre))


def test_dino_refuses_missing_wrong_and_unreadable_checkpoints(tiny_vit, tmp_path):
    from advbench_plugins.realmetrics.similarity import DinoSimilarity

    image = np.zeros((1, 32, 32, 3), np.uint8)
    message = _metric(DinoSimilarity).check_domain(None)
    assert "DINO checkpoint models/timm/vit_small_patch16_224.dino/model.safetensors not found" in message
    assert "huggingface.co/timm/vit_small_patch16_224.dino" in message and "dino.checkpoint=PATH" in message
    with pytest.raises(DataError, match=f"{tiny_vit} does not fit timm model vit_small_patch16_224.dino"):
        _metric(DinoSimilarity, checkpoint=tiny_vit).score(image, image, None, CTX)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=f"cannot read weights file {garbage}"):
        _metric(DinoSimilarity, checkpoint=str(garbage)).score(image, image, None, CTX)
    with pytest.raises(DataError, match="cannot build timm model 'no_such_vit'"):
        _metric(DinoSimilarity, model="no_such_vit", checkpoint=tiny_vit).score(image, image, None, CTX)


def test_fingerprint_follows_the_weight_file(tiny_vit, tmp_path):
    import shutil

    from advbench_plugins.realmetrics.similarity import DinoSimilarity

    copy = tmp_path / "copy.safetensors"
    shutil.copy(tiny_vit, copy)
    first = _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=tiny_vit).fingerprint()
    assert _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=str(copy)).fingerprint() == first
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x01")
    assert _metric(DinoSimilarity, model="test_vit.r160_in1k", checkpoint=str(copy)).fingerprint() != first


# ----------------------------------------------------------------------------------------------- csd
@pytest.fixture(scope="module")
def tiny_csd(tmp_path_factory):
    """(config path, image tower, style head, checkpoint path): a random CSD on a tiny CLIP ViT saved in the
    official checkpoint's layout (model_state_dict with DDP's module. prefix, args, optimiser state)."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("csd")
    config = folder / "advbench-test-tinycsd.json"
    config.write_text(json.dumps(TINY_CSD))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    visual = open_clip.create_model("advbench-test-tinycsd").visual.eval()
    style = torch.randn(32, 8)
    state = {f"backbone.{k}": v for k, v in visual.state_dict().items() if k != "proj"}
    state.update(last_layer_style=style, last_layer_content=torch.randn(32, 8))
    path = folder / "checkpoint.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "iter": 5,
                "opt_proj": {"state": {}, "param_groups": []}, "args": argparse.Namespace(arch="vit_large")}, path)
    return str(config), visual, style, str(path), state


def test_csd_style_embedding_is_clip_tower_with_the_style_head(tiny_csd, photos, tmp_path):
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from advbench_plugins.realmetrics.csd import CsdStyleSimilarity

    config, visual, style, path, state = tiny_csd
    images = np.stack(photos)
    visual.proj = torch.nn.Parameter(style)  # CLIP's own tower, projecting with CSD's style head
    transform = open_clip.image_transform(32, is_train=False)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(visual(torch.stack([transform(Image.fromarray(i)) for i in images])),
                                                 dim=-1).numpy()
    metric = _metric(CsdStyleSimilarity, model=config, checkpoint=path)
    emb = metric.embed(images, CTX)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    assert metric.score(images[:1], images[:1], None, CTX) == pytest.approx(1.0, abs=1e-6)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    flat = tmp_path / "csd.safetensors"  # the same keys without the training wrapper
    save_file({k: v.contiguous() for k, v in state.items()}, str(flat))
    np.testing.assert_allclose(_metric(CsdStyleSimilarity, model=config, checkpoint=str(flat)).embed(images, CTX),
                               emb, atol=1e-6)


def test_csd_key_layout_of_the_real_architecture():
    from advbench_plugins.realmetrics.csd import CSD_MODEL, build_csd

    net, image_size = build_csd(CSD_MODEL)  # on the meta device: no memory, no time
    keys = net.state_dict()
    assert image_size == (224, 224) and tuple(keys["last_layer_style"].shape) == (1024, 768)
    assert "backbone.proj" not in keys and len(keys) == 296  # OpenAI ViT-L/14's 296 visual tensors - proj + head
    assert {"backbone.conv1.weight", "backbone.ln_post.bias", "backbone.transformer.resblocks.23.attn.in_proj_weight",
            "backbone.transformer.resblocks.23.mlp.c_proj.weight"} <= set(keys)


def test_csd_refuses_a_checkpoint_without_the_style_head(tiny_csd, tmp_path):
    import torch

    from advbench_plugins.realmetrics.csd import CsdStyleSimilarity

    config, state = tiny_csd[0], tiny_csd[4]
    image = np.zeros((1, 32, 32, 3), np.uint8)
    message = _metric(CsdStyleSimilarity).check_domain(None)
    assert message.startswith("csd: CSD checkpoint models/csd/checkpoint.pth not found")
    assert "github.com/learn2phoenix/CSD" in message
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in state.items() if k != "last_layer_style"}, headless)
    with pytest.raises(DataError, match=f"{headless} does not fit CSD on .*1 missing keys \\(last_layer_style\\)"):
        _metric(CsdStyleSimilarity, model=config, checkpoint=str(headless)).score(image, image, None, CTX)
    missing_config = str(tmp_path / "nope.json")
    assert "open_clip model config" in _metric(CsdStyleSimilarity, model=missing_config,
                                               checkpoint=tiny_csd[3]).check_domain(None)


# ------------------------------------------------------------------------------------------ refusal
def test_missing_weights_refuse_the_domain_before_any_work(temp_plugin, tmp_path):
    import advbench_plugins.realmetrics as realmetrics
    from advbench import plugins
    from advbench.validation import domain_metrics

    if not plugins.get_plugin_manager().is_registered(realmetrics):
        temp_plugin(realmetrics, "test-realmetrics")
    missing = tmp_path / "alexnet.pth"

    class Domain:
        name, primary_metric, extra_metrics = "fake", "dino", ("lpips",)

        def metric_params(self, metric):
            return {"backbone": str(missing)} if metric == "lpips" else {"checkpoint": str(tmp_path / "dino.pth")}

    from advbench_plugins.realmetrics.perceptual import load_lpips
    from advbench_plugins.realmetrics.similarity import load_timm

    loads = load_timm.cache_info().misses + load_lpips.cache_info().misses
    with pytest.raises(UserError, match=rf"metric 'dino' cannot judge domain 'fake': dino: DINO checkpoint "
                                        rf"{tmp_path}/dino.pth not found"):
        domain_metrics(Domain())
    assert load_timm.cache_info().misses + load_lpips.cache_info().misses == loads  # no network was built
