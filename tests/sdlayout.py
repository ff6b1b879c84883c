"""A tiny Stable Diffusion pipeline folder with SD 1.5's real layout, and a small image folder of real face photos.

:func:`build_sd_folder` saves, with ``StableDiffusionPipeline.save_pretrained(safe_serialization=True)`` (what
docs/real-models.md tells users to do with the real checkpoint), SD 1.5's parts built from SD 1.5's own configs
(``benchmarks/gpu_smoke.py``) at toy widths: a UNet with SD's block types, an 8× AutoencoderKL, a CLIP text
encoder, the tokenizer files SD 1.5 ships (CLIP's full 49408-token BPE, 77 tokens, built offline from
``open_clip``'s vocabulary), the PNDM scheduler config of SD 1.5, and the safety checker and feature extractor
its folder has. Images are 64×64 (8×8 latents).

:func:`build_face_folder` writes an image folder with ``metadata.jsonl`` whose classes are two real people,
each as jittered crops of one photo a package ships: Eileen Collins (scikit-image's ``astronaut``) and Grace
Hopper (matplotlib's sample data). dlib finds a face in every crop at the model's resolution, so face metrics
judge something real.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 64
# The people, the photo each comes from, and its face box (left, top, right, bottom: dlib's HOG detection).
PEOPLE = {"eileen collins": ("astronaut", (175, 76, 265, 166)),
          "grace hopper": ("grace_hopper", (180, 139, 366, 325))}
ILLEGAL, LEGAL = "eileen collins", "grace hopper"


@functools.lru_cache(maxsize=1)
def gpu_smoke():
    """benchmarks/gpu_smoke.py as a module: the one place SD 1.5's configs are written down."""
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- the model
def build_sd_folder(folder: Path, seed: int = 0) -> Path:
    """A Stable Diffusion pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``, ``safety_checker/``, ``feature_extractor/``), safetensors weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    parts = gpu_smoke().sd15_parts("tiny", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
        checker = StableDiffusionSafetyChecker(CLIPConfig(
            text_config=tower, vision_config={**tower, "image_size": 224, "patch_size": 56}, projection_dim=32))
    pipe = StableDiffusionPipeline(**parts, safety_checker=checker, requires_safety_checker=True,
                                   feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}))
    pipe.save_pretrained(folder, safe_serialization=True)
    write_sd_tokenizer(Path(folder) / "tokenizer")
    return Path(folder)


def write_sd_tokenizer(folder: Path) -> None:
    """Replace a saved tokenizer by the files SD 1.5's ``tokenizer/`` holds (``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``, ``special_tokens_map.json``; no ``tokenizer.json``): CLIP's BPE, as
    :func:`advbench.tokenizer.clip_vocabulary` defines it."""
    import shutil

    from advbench.tokenizer import BOS, EOS, clip_vocabulary

    shutil.rmtree(folder)
    folder.mkdir()
    vocab, merges = clip_vocabulary(None)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
         "add_prefix_space": False, **special}))


# -------------------------------------------------------------------------------------------- the data
def photo(name: str) -> np.ndarray:
    """uint8 H×W×3 RGB of one shipped photo."""
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def face_crops(person: str, n: int, rng: np.random.Generator, resolution: int = RESOLUTION) -> list[np.ndarray]:
    """``n`` augmented views of the person's face: a crop 1.25-1.5× the face box, shifted by up to 8 % of it,
    mirrored every other time, brightness ×0.85-1.15, resized to ``resolution``."""
    from PIL import Image

    source, (left, top, right, bottom) = PEOPLE[person]
    image = Image.fromarray(photo(source))
    side, cx, cy = right - left, (left + right) / 2, (top + bottom) / 2
    out = []
    for i in range(n):
        half = side * rng.uniform(1.25, 1.5) / 2
        dx, dy = rng.uniform(-0.08, 0.08, size=2) * side
        crop = image.crop((round(cx + dx - half), round(cy + dy - half), round(cx + dx + half), round(cy + dy + half)))
        crop = crop.resize((resolution, resolution), Image.BICUBIC)
        if i % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop).astype(float) * rng.uniform(0.85, 1.15)
        out.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return out


def build_face_folder(folder: Path, n_per_class: int = 10, seed: int = 0) -> Path:
    """An image folder with ``metadata.jsonl`` (diffusers' format): ``n_per_class`` photos of each person,
    captioned "a photo of NAME". 10 per class split into 2 reference, 4 publisher and 4 attacker images."""
    from advbench.data import InMemoryDataset, export_image_folder
    from advbench.interfaces import Example

    rng = np.random.default_rng(seed)
    data = {p: [Example(text=f"a photo of {p}", cls=p, image=img) for img in face_crops(p, n_per_class, rng)]
            for p in PEOPLE}
    return export_image_folder(InMemoryDataset(data), folder)


# ------------------------------------------------------------------------------------------ the metrics
FAST_METRICS = ("face-distance", "face-detect-rate", "openclip-score")
WORLD_METRICS = {"clip-score", "fid", "kid", "identity-distance", "identity-recognition", "motif-recognition",
                 "motif-score", "style-distance", "style-recognition"}  # the tiny world's judges: not for folders


def offline_metrics(folder: Path, faces: Path, every: bool = False, skip: dict[str, str] | None = None
                    ) -> tuple[str, list[str], list[str], list[str]]:
    """``(primary, extras, metric_args, left_out)``: face-distance (dlib) first, then face-detect-rate and
    openclip-score, or with ``every`` each registered real-image metric this helper can give local weights to
    (random weights of the real architectures, or tiny ones, saved in ``folder``; deepface's Dlib ships its own;
    ``faces`` is deepface-recognition's gallery), except those in ``skip`` (name → why). A registered metric left
    out is named in ``left_out`` with why."""
    from advbench import plugins

    folder.mkdir(parents=True, exist_ok=True)
    registered = set(plugins.registry("metric").names()) - WORLD_METRICS
    wanted = [m for m in FAST_METRICS if m in registered]
    skip = skip or {}
    if every:
        wanted += sorted(registered - set(FAST_METRICS) - set(skip))
    args: list[str] = []
    left_out: list[str] = [f"{name} ({why})" for name, why in skip.items() if name in registered]
    for name in list(wanted):
        builder = WEIGHTS.get(name)
        if builder is None and name not in SHIPPED:
            wanted.remove(name)
            left_out.append(f"{name} (no local weights for it here)")
        elif builder is not None:
            args += [f"{name}.{key}={value}" for key, value in builder(folder).items()]
    if "deepface-recognition" in wanted:
        args.append(f"deepface-recognition.gallery={faces}")
    return wanted[0], wanted[1:], args, left_out


def _tiny_clip(folder: Path, seed: int = 0) -> dict[str, str]:
    from tests.toyworld import save_tiny_clip

    sub = folder / f"clip-{seed}"
    sub.mkdir(parents=True, exist_ok=True)
    _, config, checkpoint = save_tiny_clip(sub, seed=seed)
    return {"model": config, "checkpoint": checkpoint}


def _alexnet(folder: Path) -> dict[str, str]:
    """LPIPS's backbone: torchvision's AlexNet features, random, in torchvision's key names."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, folder / "alexnet.pth")
    return {"backbone": str(folder / "alexnet.pth")}


def _vit(folder: Path) -> dict[str, str]:
    """DINO's role: timm's tiny test ViT, random weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "vit.safetensors"))
    return {"model": "test_vit.r160_in1k", "checkpoint": str(folder / "vit.safetensors")}


def _csd(folder: Path) -> dict[str, str]:
    """CSD: the tiny open_clip image tower without ``proj``, under ``backbone.``, and a random style head."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    clip = _tiny_clip(folder, seed=2)
    visual = open_clip.create_model(Path(clip["model"]).stem).visual
    state = {f"backbone.{k}": v for k, v in visual.state_dict().items() if k != "proj"}
    state["last_layer_style"] = torch.randn(visual.proj.shape, generator=torch.Generator().manual_seed(0))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "csd.safetensors"))
    return {"model": clip["model"], "checkpoint": str(folder / "csd.safetensors")}


def _inception(folder: Path) -> dict[str, str]:
    from tests.test_cleanfid import save_tiny_inception  # clean-fid's Inception interface, random and small

    return {"inception": str(save_tiny_inception(folder / "inception.pt"))}


WEIGHTS = {"openclip-score": _tiny_clip, "lpips": _alexnet, "dino": _vit, "csd": _csd, "clean-fid": _inception,
           "clean-kid": _inception}
SHIPPED = {"face-distance", "face-detect-rate", "nudenet-score", "deepface", "deepface-recognition"}


def defense_encoder(folder: Path) -> tuple[str, str]:
    """(checkpoint, model config) of a tiny open_clip model other than the judge's (seed 1): Dark Miner's verifier."""
    clip = _tiny_clip(folder, seed=1)
    return clip["checkpoint"], clip["model"]


def domain_params(data: Path, model: Path, metrics: tuple[str, list[str], list[str], Any], **extra: Any
                  ) -> dict[str, Any]:
    """The folder domain's parameters for the fixture: one illegal and one legal person, minimal sampling."""
    primary, extras, args, _ = metrics
    return {"data": str(data), "model": str(model), "illegal": [ILLEGAL], "legal": [LEGAL], "noun": "person",
            "primary_metric": primary, "extra_metrics": extras, "metric_args": args, "steps": 3,
            "images_per_prompt": 2, **extra}


def domain_args(params: dict[str, Any]) -> list[str]:
    """``--domain-arg KEY=VALUE`` options of ``params`` (lists comma-joined)."""
    out = []
    for key, value in params.items():
        value = ",".join(value) if isinstance(value, (list, tuple)) else value
        out += ["--domain-arg", f"{key}={value}"]
    return out


# ------------------------------------------------------------------------------ minimal plugin settings
SHORT = 2  # training steps, loops, batch sizes, images: the smallest that still exercises a loop
SHORT_KEYS = ("steps", "loops", "iterations", "num_class_images", "pool_size")


def minimal_params(kind: str, name: str) -> dict[str, Any]:
    """Parameters that make a registered defense or attack as short as it can be: every integer parameter that
    counts steps, loops, iterations, images or a batch is capped at 2 (defaults below that are kept)."""
    from advbench import plugins

    params = plugins.get(kind, name).Params
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        default = f.default
        counted = f.name in SHORT_KEYS or f.name.endswith(("_steps", "batch_size", "_loops"))
        if counted and isinstance(default, int) and not isinstance(default, bool) and default > SHORT:
            out[f.name] = SHORT
    return out


# ------------------------------------------------------------------------------------------ the record
def record_problems(record: dict[str, Any], illegal: list[str], legal: list[str], metrics: list[str],
                    budgets: list[int] | None) -> list[str]:
    """What is missing from a result record (empty when it is complete): it validates, every class has its role
    and a finite value of every metric at every budget, the means cover every metric, the provenance is there."""
    import math

    from advbench.results import validate_record

    problems = []
    try:
        validate_record(record)
    except ValueError as exc:
        problems.append(f"invalid: {exc}")
    m = record["metrics"]
    roles = {c: "illegal" for c in illegal} | {c: "legal" for c in legal}
    points = m["curve"] + ([m["before"]] if "before" in m else [])
    if [p["budget"] for p in m["curve"]] != (budgets or [None]):
        problems.append(f"budgets {[p['budget'] for p in m['curve']]} != {budgets}")
    if budgets and len(budgets) > 1 and "before" not in m:
        problems.append("no before-attack point")
    for point in [m, *points]:
        for cls, role in roles.items():
            entry = point["classes"].get(cls)
            if entry is None or entry["role"] != role:
                problems.append(f"class {cls!r} missing or not {role} at budget {point.get('budget')}")
                continue
            bad = [x for x in metrics if not math.isfinite(entry["values"].get(x, float("nan")))]
            if bad:
                problems.append(f"class {cls!r} lacks {bad} at budget {point.get('budget')}")
        for role in ("illegal", "legal"):
            if set(point[role]) != set(metrics):
                problems.append(f"{role} means cover {sorted(point[role])}, not {sorted(metrics)}")
    if set(m["higher_is_better"]) != set(metrics) or m["primary"] != metrics[0]:
        problems.append(f"higher_is_better {m['higher_is_better']} / primary {m['primary']}")
    prov = record["provenance"]
    for key in ("advbench_version", "model_fingerprint", "metric_fingerprints", "device", "plugins"):
        if key not in prov:
            problems.append(f"provenance lacks {key}")
    if set(prov.get("metric_fingerprints", {})) != set(metrics):
        problems.append(f"metric fingerprints of {sorted(prov.get('metric_fingerprints', {}))}")
    return problems


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
