"""``Model``: a text-to-image diffusion model as its diffusers parts, saved and loaded as safetensors folders.

A model is a ``UNet2DConditionModel``, a text encoder (a transformers model whose output has
``last_hidden_state``), a tokenizer, the *training* noise scheduler (``DDPMScheduler``) and either a VAE
(Stable Diffusion) or a pixel ``layout`` (the tiny world: ``space_to_depth`` turns B×3×H×W images into
B×3f²×H/f×W/f "latents"). Every defense, attack and sampler in advbench works on this one type.

On disk a model is a diffusers-style folder — ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
optional ``vae/`` — with weights in safetensors only, plus ``advbench_model.json`` (layout, prompt rewrites,
resolution). ``Model.load`` also reads a plain Stable Diffusion pipeline folder saved by diffusers, and reaches the
Hugging Face hub only for an explicit ``hf:OWNER/NAME``; :mod:`advbench.modelfiles` reads the files and names the
culprit of every failure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advbench.errors import DataError
from advbench.modelfiles import (
    FORMAT_VERSION,
    META_FILE,
    SAVE_HINT,
    WEIGHTS,
    check_part_files,
    fatal,
    load_part,
    parts,
    read_layout,
    reason,
)
from advbench.modelfiles import quiet as _quiet

LAYOUTS = ("identity", "space_to_depth")
HUB_PREFIX = "hf:"
_HUB_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$", re.ASCII)  # as the hub spells repository ids
_HUB_FILES = ["*.json", "*.txt", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors"]
_HUB_SKIP = ["*.fp16.safetensors", "*.non_ema.safetensors"]


def _check_layout(layout: dict[str, Any] | None, has_vae: bool) -> dict[str, Any] | None:
    if has_vae:
        return None
    layout = dict(layout or {"type": "identity"})
    if layout.get("type") not in LAYOUTS:
        raise ValueError(f"layout type must be one of {LAYOUTS}, got {layout.get('type')!r}")
    if layout["type"] == "space_to_depth":
        layout["factor"] = int(layout.get("factor", 2))
        if layout["factor"] < 1:
            raise ValueError(f"space_to_depth factor must be >= 1, got {layout['factor']}")
    return layout


class Model:
    """A diffusers UNet + text encoder + tokenizer + training scheduler + optional VAE (see module docstring)."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, layout: dict[str, Any] | None = None,
                 prompt_rewrites: dict[str, str] | None = None, resolution: int | None = None):
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = vae
        self.layout = _check_layout(layout, vae is not None)
        self.prompt_rewrites = dict(prompt_rewrites or {})
        self._resolution = resolution
        channels = self.latent_channels_expected()
        if channels is not None and unet.config.in_channels != channels:
            raise ValueError(f"layout {self.layout} needs a UNet with {channels} input channels, "
                             f"got {unet.config.in_channels}")
        for module in self.components().values():
            module.eval()

    # ---------------------------------------------------------------------------------- structure
    def components(self) -> dict[str, torch.nn.Module]:
        """The torch modules by folder name: ``unet``, ``text_encoder`` and ``vae`` when present."""
        parts = {"unet": self.unet, "text_encoder": self.text_encoder}
        if self.vae is not None:
            parts["vae"] = self.vae
        return parts

    def latent_channels_expected(self) -> int | None:
        if self.vae is not None:
            return None
        return 3 * self.layout.get("factor", 1) ** 2 if self.layout["type"] == "space_to_depth" else 3

    @property
    def downscale(self) -> int:
        """Pixels per latent position along one side."""
        if self.vae is not None:
            return 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.layout.get("factor", 1) if self.layout["type"] == "space_to_depth" else 1

    @property
    def resolution(self) -> int:
        """Image side in pixels."""
        if self._resolution is not None:
            return int(self._resolution)
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * self.downscale

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.downscale
        return (self.unet.config.in_channels, side, side)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ------------------------------------------------------------------------------------ compute
    def encode_images(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """B×3×H×W images in [-1, 1] → latents (a VAE sample × scaling factor, or the pixel layout)."""
        if self.vae is not None:
            x = x.to(self.vae.device, self.vae.dtype)
            latents = self.vae.encode(x).latent_dist.sample(generator=generator)
            return latents * self.vae.config.scaling_factor
        if self.layout["type"] == "space_to_depth":
            return F.pixel_unshuffle(x, self.layout["factor"])
        return x

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → B×3×H×W images in [-1, 1] (not clamped)."""
        if self.vae is not None:
            z = z.to(self.vae.device, self.vae.dtype)
            return self.vae.decode(z / self.vae.config.scaling_factor).sample
        if self.layout["type"] == "space_to_depth":
            return F.pixel_shuffle(z, self.layout["factor"])
        return z

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → B×L×D text-encoder hidden states (padded to the tokenizer's max length)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tokens.input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    def rewrite_prompt(self, prompt: str) -> str:
        """Apply ``prompt_rewrites`` (e.g. ``person_03`` → ``<person_03>``), longest key first."""
        for key in sorted(self.prompt_rewrites, key=len, reverse=True):
            prompt = prompt.replace(key, self.prompt_rewrites[key])
        return prompt

    # ------------------------------------------------------------------------------------- copies
    def clone(self) -> Model:
        """A deep copy: weights, tokenizer (textual inversion adds tokens), scheduler and rewrites."""
        return copy.deepcopy(self)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Model:
        """Move every component (in place) and return ``self``."""
        for module in self.components().values():
            kwargs = {"device": device} if device is not None else {}
            if dtype is not None and any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
                kwargs["dtype"] = dtype  # only when it changes something: diffusers warns on every dtype cast
            if kwargs:
                with _quiet():  # diffusers warns on any dtype cast, even with no fp32-only modules
                    module.to(**kwargs)
        return self

    def fingerprint(self) -> str:
        """sha256 over every component's tensors (names, shapes, dtypes, bytes), configs and rewrites."""
        digest = hashlib.sha256()
        for name, module in self.components().items():
            state = module.state_dict()
            for key in sorted(state):
                tensor = state[key].detach()
                digest.update(f"{name}.{key}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
                digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            digest.update(_config_json(module.config).encode())
        digest.update(_config_json(self.scheduler.config).encode())
        digest.update(_tokenizer_state(self.tokenizer).encode())
        digest.update(json.dumps({"layout": self.layout, "rewrites": self.prompt_rewrites,
                                  "resolution": self.resolution}, sort_keys=True).encode())
        return digest.hexdigest()

    # -------------------------------------------------------------------------------------- disk
    def save(self, folder: str | Path) -> None:
        """Write a diffusers-style folder with safetensors weights and ``advbench_model.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        with _quiet():
            self.text_encoder.save_pretrained(folder / "text_encoder")  # safetensors is transformers' default
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
            (folder / "model_index.json").write_text(json.dumps(self._model_index(), indent=2))
        for part in self.components():
            if not (folder / part / WEIGHTS[part]).exists():
                raise RuntimeError(f"{part} was not saved as {folder / part / WEIGHTS[part]}")
        meta = {"format_version": FORMAT_VERSION, "layout": self.layout, "prompt_rewrites": self.prompt_rewrites,
                "resolution": self.resolution}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    def _model_index(self) -> dict[str, Any]:
        import diffusers

        def ref(obj):
            library = "diffusers" if type(obj).__module__.startswith("diffusers") else "transformers"
            return [library, type(obj).__name__]

        return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                "unet": ref(self.unet), "text_encoder": ref(self.text_encoder), "tokenizer": ref(self.tokenizer),
                "scheduler": ref(self.scheduler), "vae": ref(self.vae), "safety_checker": [None, None],
                "feature_extractor": [None, None], "requires_safety_checker": False}

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Model:
        """Load a local advbench model folder or Stable Diffusion pipeline folder, or the hub snapshot of an
        explicit ``hf:OWNER/NAME`` (nothing else reaches a hub). A DataError names the culprit: a missing file, a
        wrong config, a config that does not match the weights, corrupt weights (advbench.modelfiles)."""
        path = resolve_folder(folder)
        meta, has_vae = read_layout(path)
        loaded = {part: load_part(path, part) for part in [*parts(has_vae), "tokenizer"]}
        try:
            return cls(loaded["unet"], loaded["text_encoder"], loaded["tokenizer"], loaded["scheduler"],
                       loaded.get("vae"), layout=meta.get("layout"), prompt_rewrites=meta.get("prompt_rewrites"),
                       resolution=meta.get("resolution"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path / META_FILE} does not fit the model in {path}: {exc}; re-save the model with "
                            f"advbench") from None


def check_folder(folder: str | os.PathLike) -> None:
    """What :meth:`Model.load` checks before building anything, without building or downloading: a local folder's
    layout, configs (JSON objects) and safetensors files (complete headers), or the form of an ``hf:`` id."""
    if os.fspath(folder).startswith(HUB_PREFIX):
        parse_hub_id(os.fspath(folder))
        return
    path = resolve_folder(folder)
    _, has_vae = read_layout(path)
    for part in [*parts(has_vae), "tokenizer"]:
        check_part_files(path, part)


# ------------------------------------------------------------------------------------- where the model is
def is_hub_id(text: str) -> bool:
    """``owner/name`` as the Hugging Face hub spells repository ids."""
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text and not text.endswith(".git")


def parse_hub_id(text: str) -> str:
    """The repository id of ``hf:OWNER/NAME``; a DataError when it is malformed."""
    repo = text[len(HUB_PREFIX):]
    if not is_hub_id(repo):
        raise DataError(f"hub id {text} is malformed: write {HUB_PREFIX}OWNER/NAME (letters, digits, '-', '_', '.'), "
                        f"e.g. {HUB_PREFIX}stable-diffusion-v1-5/stable-diffusion-v1-5, or pass a local model folder")
    return repo


def resolve_folder(folder: str | os.PathLike) -> Path:
    """The local folder to load: ``folder`` itself, or the hub snapshot of an explicit ``hf:OWNER/NAME``."""
    text = os.fspath(folder)
    if text.startswith(HUB_PREFIX):
        return _hub_snapshot(parse_hub_id(text))
    path = Path(text).expanduser()
    if not path.exists():
        hint = f" (to download from the Hugging Face hub, write {HUB_PREFIX}{text})" if is_hub_id(text) else ""
        raise DataError(f"model folder {text} does not exist; {SAVE_HINT}{hint}")
    if not path.is_dir():
        raise DataError(f"model path {text} is a file, not a folder; {SAVE_HINT}")
    return path


def _hub_snapshot(repo: str) -> Path:
    """The snapshot of hub repository ``repo`` (configs, tokenizer files, safetensors weights; from the local hub
    cache when ``HF_HUB_OFFLINE`` is set), or a DataError saying how to place the folder locally instead."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=_HUB_FILES, ignore_patterns=_HUB_SKIP))
    except Exception as exc:  # offline, unreachable, unknown or gated: one way to fail for the user
        fatal(exc)
        name = repo.split("/")[-1]
        raise DataError(f"model {HUB_PREFIX}{repo} could not be downloaded from the Hugging Face hub "
                        f"({reason(exc)}); place it locally instead: on a machine with network access run "
                        f"StableDiffusionPipeline.from_pretrained('{repo}').save_pretrained('models/{name}', "
                        f"safe_serialization=True), copy models/{name} here and give that folder as the model "
                        f"(e.g. --model models/{name})") from None


# ------------------------------------------------------------------------------------------ helpers
def _config_json(config: Any) -> str:
    items = {k: v for k, v in dict(config.to_dict() if hasattr(config, "to_dict") else config).items()
             if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "architectures")}
    return json.dumps(items, sort_keys=True, default=str)


def _tokenizer_state(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{vocab}"
