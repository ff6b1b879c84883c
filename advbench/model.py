"""``Model``: a text-to-image diffusion model as its diffusers parts, saved and loaded as safetensors folders.

A model is a ``UNet2DConditionModel``, a text encoder (a transformers model whose output has
``last_hidden_state``), a tokenizer, the *training* noise scheduler (``DDPMScheduler``) and either a VAE
(Stable Diffusion) or a pixel ``layout`` (the tiny world: ``space_to_depth`` turns B×3×H×W images into
B×3f²×H/f×W/f "latents"). Every defense, attack and sampler in advbench works on this one type.

On disk a model is a diffusers-style folder — ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
optional ``vae/`` — with weights in safetensors only, plus ``advbench_model.json`` (layout, prompt rewrites,
resolution). ``Model.load`` also reads a plain Stable Diffusion pipeline folder saved by diffusers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advbench.errors import DataError

FORMAT_VERSION = 1
META_FILE = "advbench_model.json"
LAYOUTS = ("identity", "space_to_depth")
SAVE_HINT = "point --model at a diffusers folder saved with save_pretrained(safe_serialization=True)"
_WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
            "text_encoder": "model.safetensors"}
_CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
            "scheduler": "scheduler_config.json"}


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
            if not (folder / part / _WEIGHTS[part]).exists():
                raise RuntimeError(f"{part} was not saved as {folder / part / _WEIGHTS[part]}")
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
    def load(cls, folder: str | Path) -> Model:
        """Load an advbench model folder or a Stable Diffusion pipeline folder (or, online, a hub id)."""
        path = Path(folder).expanduser()
        if not path.exists():
            hub = _hub_snapshot(str(folder))
            if hub is None:
                raise DataError(f"model folder {folder} does not exist; {SAVE_HINT}")
            path = hub
        if not path.is_dir():
            raise DataError(f"model path {folder} is a file, not a folder; {SAVE_HINT}")
        meta: dict[str, Any] = {}
        if (path / META_FILE).exists():
            try:
                meta = json.loads((path / META_FILE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path / META_FILE} is not valid JSON ({exc}); re-save the model with "
                                f"advbench or delete the file if the folder is a Stable Diffusion pipeline") from None
            if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
                raise DataError(f"{path / META_FILE} has format_version {meta['format_version']}, newer than this "
                                f"advbench understands ({FORMAT_VERSION}); upgrade advbench")
        has_vae = (path / "vae").is_dir() or "vae" in _model_index_parts(path)
        if not has_vae and not meta:
            raise DataError(f"model folder {path} has neither vae/ nor {META_FILE}; {SAVE_HINT} "
                            f"(a Stable Diffusion pipeline folder, or a folder written by advbench)")
        parts = ["unet", "text_encoder", "scheduler"] + (["vae"] if has_vae else [])
        for part in parts:
            _require(path, part, _CONFIGS[part])
            if part in _WEIGHTS:
                _require_weights(path, part)
        tok_dir = path / "tokenizer"
        if not tok_dir.is_dir() or not any(tok_dir.iterdir()):
            raise DataError(f"model folder {path} has no tokenizer/ (tokenizer.json, or vocab.json + merges.txt); "
                            f"{SAVE_HINT}")
        return cls(_load_part(path, "unet"), _load_part(path, "text_encoder"), _load_part(path, "tokenizer"),
                   _load_part(path, "scheduler"), _load_part(path, "vae") if has_vae else None,
                   layout=meta.get("layout"), prompt_rewrites=meta.get("prompt_rewrites"),
                   resolution=meta.get("resolution"))


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def _quiet():
    """Silence transformers' per-file progress bars and diffusers' warnings (restored afterwards)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was_enabled, verbosity = tlog.is_progress_bar_enabled(), dlog.get_verbosity()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(verbosity)
        if was_enabled:
            tlog.enable_progress_bar()


def _config_json(config: Any) -> str:
    items = {k: v for k, v in dict(config.to_dict() if hasattr(config, "to_dict") else config).items()
             if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "architectures")}
    return json.dumps(items, sort_keys=True, default=str)


def _tokenizer_state(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{vocab}"


def _model_index_parts(path: Path) -> set[str]:
    index = path / "model_index.json"
    if not index.exists():
        return set()
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{index} is not valid JSON ({exc}); restore it from the original model") from None
    return {k for k, v in data.items() if isinstance(v, list) and v and v[0] is not None}


def _require(path: Path, part: str, filename: str) -> None:
    if not (path / part / filename).exists():
        raise DataError(f"model folder {path} has no {part}/{filename}; {SAVE_HINT}")


def _require_weights(path: Path, part: str) -> None:
    name = _WEIGHTS[part]
    if (path / part / name).exists() or (path / part / f"{name}.index.json").exists():
        return
    legacy = [p.name for p in (path / part).glob("*.bin")] + [p.name for p in (path / part).glob("*.ckpt")]
    extra = (f" (it has {', '.join(legacy)}: advbench loads safetensors only; load and re-save it with "
             f"save_pretrained(safe_serialization=True))") if legacy else ""
    raise DataError(f"model folder {path} has no {part}/{name}{extra}; {SAVE_HINT}")


def _load_part(path: Path, part: str) -> Any:
    """Load one component, turning a corrupt or unreadable file into a DataError naming it."""
    from safetensors import SafetensorError

    sub = path / part
    try:
        if part == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(sub, use_safetensors=True)
        if part == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(sub, use_safetensors=True)
        if part == "scheduler":
            from diffusers import DDPMScheduler

            # The training scheduler, as diffusers' fine-tuning scripts build it from any pipeline's config.
            return DDPMScheduler.from_pretrained(sub)
        if part == "tokenizer":
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(sub)
        import transformers

        config = json.loads((sub / "config.json").read_text())
        arch = (config.get("architectures") or ["CLIPTextModel"])[0]
        model_cls = getattr(transformers, arch, None) or transformers.CLIPTextModel
        with _quiet():
            return model_cls.from_pretrained(sub, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, json.JSONDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        target = sub / _WEIGHTS[part] if part in _WEIGHTS else sub
        raise DataError(f"cannot load {target} ({detail[:200]}); the file is corrupt or incomplete: "
                        f"replace it with a copy saved by save_pretrained(safe_serialization=True)") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_snapshot(name: str) -> Path | None:
    """A hub id's local snapshot (safetensors, configs, tokenizer files), or None when offline or not an id."""
    if not _HUB_ID.match(name) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors", "tokenizer/*"],
                                      ignore_patterns=["*.fp16.safetensors", "*.non_ema.safetensors"]))
    except Exception:  # any hub failure means "not a usable hub id": report the missing folder instead
        return None
