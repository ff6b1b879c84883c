"""The files of a local model folder: every failure names the file that is wrong and why.

Every library call below is given a local folder and ``local_files_only=True``, so none can fall back to a hub
(``hf:`` ids are resolved to a local snapshot first, in :mod:`advbench.model`). :func:`read_layout` checks which
parts a folder has; :func:`check_part_files` checks, without building anything, that a part's config is a JSON
object and its safetensors files are complete; :func:`load_part` builds one part and tells its ways of failing
apart:

- the **config** is wrong: not JSON, not an object, or values the class cannot be built from;
- the config **does not match the weights**: other shapes, or tensors missing or left over. diffusers and
  transformers would fill missing tensors with random values and only warn; advbench refuses;
- the **weights** are corrupt or incomplete: a truncated download, a file that is not safetensors;
- the **tokenizer** files are corrupt.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advbench.errors import DataError

FORMAT_VERSION = 1
META_FILE = "advbench_model.json"
SAVE_HINT = "point --model at a diffusers folder saved with save_pretrained(safe_serialization=True)"
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}
CONFIGS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
           "scheduler": "scheduler_config.json"}
RESAVE = "replace the file with a copy saved by save_pretrained(safe_serialization=True)"
CONFIG_FIX = "restore the config saved together with the weights (save_pretrained writes both)"
REASON_LIMIT = 800  # characters of a library's reason kept in a message; longer ones end at a clause, with "(...)"
# Unexpected checkpoint keys that are provably harmless. CLIP's ``embeddings.position_ids`` is a buffer holding
# arange(max_position_embeddings), rebuilt from the config and no longer saved (non-persistent since transformers
# 4.31); older text-encoder checkpoints still carry it. transformers drops it itself today
# (``_keys_to_ignore_on_load_unexpected``); this covers versions that report it.
BENIGN_UNEXPECTED = ("embeddings.position_ids",)


# -------------------------------------------------------------------------------------------- messages
def one_line(text: Any, limit: int = REASON_LIMIT) -> str:
    """``text`` on one line (whitespace collapsed); past ``limit``, cut at a clause boundary and marked "(...)"."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(mark) + 1 for mark in (". ", "; ", ", ", ": ", ") "))
    if end < limit // 2:
        end = cut.rfind(" ")
    return cut[:end].rstrip(" ,;:") + " (...)"


def reason(exc: BaseException) -> str:
    """An exception's full message on one line, with its type where the message alone is cryptic."""
    text = one_line(exc)
    name = type(exc).__name__
    if not text:
        return name
    if isinstance(exc, (KeyError, TypeError, AttributeError, IndexError)) or " " not in text:
        return f"{name}: {text}"
    return text


def fatal(exc: BaseException) -> None:
    """Re-raise what is no fault of the files (out of memory) instead of blaming a config or weights."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        raise exc


@contextmanager
def quiet():
    """Silence transformers' progress bars and warnings and diffusers' warnings (restored afterwards): a load
    that would warn is refused with a DataError instead."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was_enabled, dverbosity, tverbosity = tlog.is_progress_bar_enabled(), dlog.get_verbosity(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(dverbosity)
        tlog.set_verbosity(tverbosity)
        if was_enabled:
            tlog.enable_progress_bar()


# ---------------------------------------------------------------------------------------------- layout
def _json_file(path: Path) -> Any:
    """The parsed JSON of ``path``; ValueError (with the position) when it is not JSON, OSError when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def read_layout(path: Path) -> tuple[dict[str, Any], bool]:
    """``(advbench_model.json's content or {}, whether the folder has a VAE)``; a DataError naming the first
    missing or unreadable file."""
    meta: dict[str, Any] = {}
    if (path / META_FILE).exists():
        try:
            meta = _json_file(path / META_FILE)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path / META_FILE} is {reason(exc)}; re-save the model with advbench or delete the "
                            f"file if the folder is a Stable Diffusion pipeline") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path / META_FILE} is a JSON {_kind(meta)}, not an object; re-save the model with "
                            f"advbench or delete the file if the folder is a Stable Diffusion pipeline")
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise DataError(f"{path / META_FILE} has format_version {meta['format_version']}, newer than this "
                            f"advbench understands ({FORMAT_VERSION}); upgrade advbench")
    has_vae = (path / "vae").is_dir() or "vae" in _model_index_parts(path)
    if not has_vae and not meta:
        raise DataError(f"model folder {path} has neither vae/ nor {META_FILE}; {SAVE_HINT} "
                        f"(a Stable Diffusion pipeline folder, or a folder written by advbench)")
    for part in parts(has_vae):
        if not (path / part / CONFIGS[part]).exists():
            raise DataError(f"model folder {path} has no {part}/{CONFIGS[part]}; {SAVE_HINT}")
        if part in WEIGHTS:
            _require_weights(path, part)
    tok_dir = path / "tokenizer"
    if not tok_dir.is_dir() or not any(tok_dir.iterdir()):
        raise DataError(f"model folder {path} has no tokenizer/ (tokenizer.json, or vocab.json + merges.txt); "
                        f"{SAVE_HINT}")
    return meta, has_vae


def parts(has_vae: bool) -> list[str]:
    """The parts with a config, in load order."""
    return ["unet", "text_encoder", "scheduler"] + (["vae"] if has_vae else [])


def _model_index_parts(path: Path) -> set[str]:
    index = path / "model_index.json"
    if not index.exists():
        return set()
    try:
        data = _json_file(index)
    except (ValueError, OSError) as exc:
        raise DataError(f"{index} is {reason(exc)}; restore it from the original model") from None
    if not isinstance(data, dict):
        raise DataError(f"{index} is a JSON {_kind(data)}, not an object; restore it from the original model")
    return {k for k, v in data.items() if isinstance(v, list) and v and v[0] is not None}


def _require_weights(path: Path, part: str) -> None:
    name = WEIGHTS[part]
    if (path / part / name).exists() or (path / part / f"{name}.index.json").exists():
        return
    legacy = [p.name for p in (path / part).glob("*.bin")] + [p.name for p in (path / part).glob("*.ckpt")]
    extra = (f" (it has {', '.join(legacy)}: advbench loads safetensors only; load and re-save it with "
             f"save_pretrained(safe_serialization=True))") if legacy else ""
    raise DataError(f"model folder {path} has no {part}/{name}{extra}; {SAVE_HINT}")


# ------------------------------------------------------------------------------------- files of a part
def read_config(path: Path) -> dict[str, Any]:
    """A part's config as a dict; a DataError "config PATH is wrong: ..." when it is not a JSON object."""
    try:
        config = _json_file(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"config {path} is wrong: {reason(exc)}; {CONFIG_FIX}") from None
    if not isinstance(config, dict):
        raise DataError(f"config {path} is wrong: a JSON {_kind(config)} instead of an object {{...}}; {CONFIG_FIX}")
    return config


def check_weights(sub: Path, part: str) -> Path:
    """The part's weights file (or shard index), each safetensors file checked complete from its header."""
    name = WEIGHTS[part]
    single, index = sub / name, sub / f"{name}.index.json"
    if single.exists():
        _check_safetensors(single)
        return single
    try:
        weight_map = _json_file(index).get("weight_map")
    except (ValueError, OSError, AttributeError) as exc:
        raise DataError(f"weights index {index} is corrupt or incomplete: {reason(exc)}; {RESAVE}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DataError(f"weights index {index} is corrupt or incomplete: it has no weight_map; {RESAVE}")
    for shard in sorted({str(v) for v in weight_map.values()}):
        if not (sub / shard).is_file():
            raise DataError(f"weights {sub / shard} are missing ({index} lists them); {RESAVE}")
        _check_safetensors(sub / shard)
    return index


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:  # validates the header against the file's size
            count = len(list(handle.keys()))
    except Exception as exc:
        fatal(exc)
        raise DataError(f"weights {path} are corrupt or incomplete: {reason(exc)}; {RESAVE}") from None
    if not count:
        raise DataError(f"weights {path} are corrupt or incomplete: the file holds no tensors; {RESAVE}")


def check_tokenizer_files(sub: Path) -> None:
    """Every JSON file of a tokenizer folder parses."""
    for path in sorted(sub.glob("*.json")):
        try:
            _json_file(path)
        except (ValueError, OSError) as exc:
            raise DataError(f"tokenizer {sub} is corrupt: {path.name} is {reason(exc)}; replace the folder with the "
                            f"tokenizer/ saved together with the model (tokenizer.save_pretrained)") from None


def check_part_files(path: Path, part: str) -> None:
    """Everything :func:`load_part` reads, checked without building a model."""
    if part == "tokenizer":
        check_tokenizer_files(path / part)
        return
    read_config(path / part / CONFIGS[part])
    if part in WEIGHTS:
        check_weights(path / part, part)


# ----------------------------------------------------------------------------------------------- loading
def load_part(path: Path, part: str) -> Any:
    """Build one part of the model folder ``path`` from local files only (see the module docstring)."""
    sub = path / part
    if part == "tokenizer":
        from transformers import AutoTokenizer

        check_tokenizer_files(sub)
        try:
            with quiet():
                return AutoTokenizer.from_pretrained(sub, local_files_only=True)
        except Exception as exc:
            fatal(exc)
            raise DataError(f"tokenizer {sub} is corrupt or incomplete: {reason(exc)}; replace the folder with the "
                            f"tokenizer/ saved together with the model (tokenizer.save_pretrained)") from None
    config_file = sub / CONFIGS[part]
    config = read_config(config_file)
    if part == "scheduler":
        from diffusers import DDPMScheduler

        try:  # the training scheduler, as diffusers' fine-tuning scripts build it from any pipeline's config
            with quiet():
                return DDPMScheduler.from_pretrained(sub, local_files_only=True)
        except Exception as exc:
            fatal(exc)
            raise DataError(f"config {config_file} is wrong: DDPMScheduler cannot be built from it ({reason(exc)}); "
                            f"{CONFIG_FIX}") from None
    weights = check_weights(sub, part)
    model_cls = _model_class(part, config, config_file)
    kwargs = {"use_safetensors": True, "local_files_only": True, "output_loading_info": True}
    try:
        with quiet():
            model, info = model_cls.from_pretrained(sub, **kwargs)
    except Exception as exc:
        fatal(exc)
        _check_buildable(model_cls, config, config_file)
        info = _loading_info_despite_mismatches(model_cls, sub, kwargs)
        if info is None or not mismatch(info):
            raise DataError(f"weights {weights} cannot be loaded with config {config_file}: {reason(exc)}; "
                            f"{RESAVE}") from None
    problem = mismatch(info)
    if problem:
        raise DataError(f"config {config_file} does not match the weights {weights}: {problem}; put the config "
                        f"saved together with these weights next to them, or replace both with a copy saved by "
                        f"save_pretrained(safe_serialization=True)")
    return model


def _model_class(part: str, config: dict[str, Any], config_file: Path) -> Any:
    if part == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel
    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL
    import transformers

    archs = config.get("architectures") or ["CLIPTextModel"]
    if not isinstance(archs, list) or not isinstance(archs[0], str):
        raise DataError(f"config {config_file} is wrong: architectures must be a list of class names, got "
                        f"{archs!r}; {CONFIG_FIX}")
    model_cls = getattr(transformers, archs[0], None) if archs[0].isidentifier() else None
    if model_cls is None:
        return transformers.CLIPTextModel  # an unknown name: the text encoder of every Stable Diffusion 1.x/2.x
    if not (isinstance(model_cls, type) and issubclass(model_cls, transformers.PreTrainedModel)):
        raise DataError(f"config {config_file} is wrong: architectures names {archs[0]}, which is not a transformers "
                        f"model class; {CONFIG_FIX}")
    return model_cls


def _is_diffusers(model_cls: Any) -> bool:
    from diffusers import ModelMixin

    return issubclass(model_cls, ModelMixin)


def _check_buildable(model_cls: Any, config: dict[str, Any], config_file: Path) -> None:
    """A DataError "config is wrong" when ``model_cls`` cannot be built from ``config`` (built on the meta
    device: no memory, no weights)."""
    import torch

    try:
        with quiet(), torch.device("meta"):
            if _is_diffusers(model_cls):
                model_cls.from_config(config)
            else:
                model_cls(model_cls.config_class.from_dict(config))
    except Exception as exc:
        fatal(exc)
        raise DataError(f"config {config_file} is wrong: {model_cls.__name__} cannot be built from it "
                        f"({reason(exc)}); {CONFIG_FIX}") from None


def _loading_info_despite_mismatches(model_cls: Any, sub: Path, kwargs: dict[str, Any]) -> dict | None:
    """The libraries stop at the first shape mismatch; loading again while letting them through lists them all."""
    extra: dict[str, Any] = {"ignore_mismatched_sizes": True}
    if _is_diffusers(model_cls):
        extra["low_cpu_mem_usage"] = False  # diffusers ignores mismatched sizes only on this path
    try:
        with quiet():
            return model_cls.from_pretrained(sub, **kwargs, **extra)[1]
    except Exception as exc:
        fatal(exc)
        return None


def mismatch(info: dict[str, Any]) -> str:
    """What ``from_pretrained(..., output_loading_info=True)`` reports as not fitting, or "" when all fits."""
    shapes = sorted(info.get("mismatched_keys") or [], key=str)
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not str(k).endswith(BENIGN_UNEXPECTED))
    problems = []
    if shapes:
        first = shapes[0]
        example = (f"{first[0]}: weights {list(first[1])}, config expects {list(first[2])}"
                   if isinstance(first, (tuple, list)) and len(first) == 3 else str(first))
        problems.append(f"{_count(len(shapes), 'tensor')} {'has' if len(shapes) == 1 else 'have'} other shapes, "
                        f"e.g. {example}")
    if missing:
        problems.append(f"{_count(len(missing), 'weight')} missing from the file ({_examples(missing)})")
    if unexpected:
        problems.append(f"{_count(len(unexpected), 'unexpected weight')} in the file ({_examples(unexpected)})")
    problems += [one_line(msg) for msg in info.get("error_msgs") or []]
    return "; ".join(problems)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(map(str, keys[:n]))
    return shown if len(keys) <= n else f"e.g. {shown}"
