"""A toy domain, metric, dataset source and defense on advbench.testing's tiny model, registered by tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advbench.hookspecs import hookimpl
from advbench.interfaces import DatasetSource, Defense, Domain, Metric, ProtectedModel
from advbench.params import param

CALLS = {"dataset": 0}


class ToyDataset(DatasetSource):
    """Four tiny classes of coloured patterns."""

    @dataclass(frozen=True)
    class Params:
        per_class: int = param(10, "images per class")

    def load(self):
        from advbench.testing import tiny_dataset

        CALLS["dataset"] += 1
        return tiny_dataset(n_classes=4, n_per_class=self.params.per_class, seed=0)


class ToyDomain(Domain):
    """Two illegal and two legal toy classes."""

    primary_metric = "toy-brightness"
    extra_metrics = ("toy-spread",)

    @dataclass(frozen=True)
    class Params:
        per_class: int = param(10, "images per class")

    def dataset(self):
        return ToyDataset(ToyDataset.Params(self.params.per_class)).load()

    def illegal_classes(self):
        return ["class_0", "class_1"]

    def legal_classes(self):
        return ["class_2", "class_3"]

    def prompts(self, cls):
        return [f"a photo of {cls}"]

    def base_model(self):
        from advbench.testing import tiny_model

        return tiny_model(seed=0)

    def exposure(self):
        return {"steps": 2, "batch_size": 2}  # the exposed base in two steps (the default recipe takes minutes)


class PerImageDomain(ToyDomain):
    """The toy domain scored by a mean-over-images primary metric, so records carry per-image values."""

    primary_metric = "toy-image-brightness"
    extra_metrics = ("toy-brightness",)

    def sampling(self):
        return {"scheduler": "ddim", "steps": 2, "guidance_scale": 2.0, "images_per_prompt": 2, "batch_size": 2}


class Brightness(Metric):
    """|mean generated brightness − mean reference brightness| / 255."""

    higher_is_better = False

    def score(self, images, references, prompts, ctx, cls=None):
        return float(abs(images.astype(float).mean() - references.astype(float).mean()) / 255)


class ImageBrightness(Metric):
    """Per image: |its mean brightness − mean reference brightness| / 255; the score is their mean."""

    higher_is_better = False

    def per_image(self, images, references, prompts, ctx, cls=None):
        ref = references.astype(float).mean()
        return np.abs(images.astype(float).reshape(len(images), -1).mean(1) - ref) / 255

    def score(self, images, references, prompts, ctx, cls=None):
        return float(self.per_image(images, references, prompts, ctx, cls).mean())


class Spread(Metric):
    """Pixel std of generated images / 255."""

    higher_is_better = True
    needs_references = False

    def score(self, images, references, prompts, ctx, cls=None):
        return float(images.astype(float).std() / 255)


class EncoderProbe(Defense):
    """A defense that needs the domain's defense-side encoder (as Dark Miner does); it changes nothing and records
    the fingerprint of the encoder it got (None when none) in its info."""

    uses_encoder = True

    def protect(self, model, publisher_data, ctx):
        encoder = publisher_data.encoder
        return ProtectedModel(model, info={"encoder": encoder.fingerprint() if encoder is not None else None})


class ToyPlugin:
    """Registers the toy pieces (used through the temp_plugin fixture)."""

    @hookimpl
    def register_defenses(self, register):
        register("toy-encoder", EncoderProbe)

    @hookimpl
    def register_domains(self, register):
        register("toy", ToyDomain)
        register("toy-images", PerImageDomain)

    @hookimpl
    def register_datasets(self, register):
        register("toy-data", ToyDataset)

    @hookimpl
    def register_metrics(self, register):
        register("toy-brightness", Brightness)
        register("toy-spread", Spread)
        register("toy-image-brightness", ImageBrightness)


# The smallest bench spec: the toy domain, the undefended model, a two-step full fine-tune.
TOY_SPEC = """
[[domains]]
name = "toy"
[[defenses]]
name = "none"
[[attacks]]
name = "fullft"
params = { steps = 2, batch_size = 2 }
"""
RANDOM_DEFENSE = """
[[defenses]]
name = "random"
params = { p = 0.5 }
"""


def fast_attack_args():
    return {"steps": 2, "batch_size": 2}


def images_equal(a, b) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


# `advbench ARGS...` in a fresh process with the toy plugin registered (what a user's shell would run).
CLI = """
import sys
from advbench import plugins
from tests.toyworld import ToyPlugin
plugins.register_plugin(ToyPlugin(), "toy-plugin")
from advbench.cli.main import main
sys.argv = ["advbench", *sys.argv[1:]]
main()
"""


def cli_process(args, cwd=None, env=None, **popen):
    """A ``subprocess.Popen`` of ``advbench *args`` with the toy plugin, one torch thread, stdout/stderr piped."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", CLI, *map(str, args)], cwd=cwd or root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


# A tiny open_clip architecture (random weights): real-model code paths without a download.
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def save_tiny_clip(folder, seed=0):
    """(model, config path, checkpoint path): a seeded tiny open_clip model saved as a model-config JSON (named
    advbench-test-tinyclip) and a safetensors checkpoint in ``folder``."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    config = folder / "advbench-test-tinyclip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model("advbench-test-tinyclip").eval()
    checkpoint = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return model, str(config), str(checkpoint)
