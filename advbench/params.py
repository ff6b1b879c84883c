"""Plugin parameters: typed dataclasses, built from CLI ``key=value`` strings or TOML values.

A plugin declares ``Params``, a dataclass whose fields carry ``metadata={"help": ...}`` and whose
``__post_init__`` raises ``ValueError`` for a bad value. :func:`build_params` turns user input into that
dataclass and turns every mistake into a one-line :class:`~advbench.errors.ParamError` naming the plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from advbench.errors import ParamError


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A plugin without parameters."""


def param(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with a default and a help text (shown by ``advbench show``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: for use in ``__post_init__``."""
    if not condition:
        raise ValueError(message)


def parse_assignments(items: tuple[str, ...] | list[str], option: str) -> dict[str, str]:
    """``["p=0.3", "seed=1"]`` -> ``{"p": "0.3", "seed": "1"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"{option} {item!r} is not key=value; write e.g. {option} p=0.3")
        key, value = key.strip(), value.strip()
        if key in out and out[key] != value:
            raise ParamError(f"{option} {key} is given twice ({key}={out[key]} and {key}={value}); keep one")
        out[key] = value
    return out


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ParamError as exc:
                errors.append(str(exc))
        raise ParamError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ParamError(f"{where} must be one of {', '.join(map(str, args))}, not {value!r}")
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ParamError(f"{where} must be a list, not {value!r}")
        inner = args[0] if args else str
        coerced = [_coerce(v.strip() if isinstance(v, str) else v, inner, where) for v in items if v != ""]
        return tuple(coerced) if origin is tuple else coerced
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ParamError(f"{where} must be true or false, not {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ParamError(f"{where} must be an integer, not {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ParamError(f"{where} must be an integer, not {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ParamError(f"{where} must be a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParamError(f"{where} must be a number, not {value!r}") from None
        if not math.isfinite(number):  # nan/inf would train NaN weights or hash to "NaN" cache keys
            raise ParamError(f"{where} must be a finite number, not {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ParamError(f"{where} must be a string, not {value!r}")
        return str(value)
    return value


def build_params(cls: type, values: dict[str, Any] | None, label: str) -> Any:
    """Build the ``Params`` dataclass ``cls`` from ``values``; ``label`` names the plugin, e.g. "defense 'random'"."""
    values = dict(values or {})
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(types_), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        available = ", ".join(types_) or "(it takes none)"
        raise ParamError(f"Unknown parameter '{key}' for {label}.{hint} Available: {available}")
    kwargs = {k: _coerce(v, types_[k], f"{label}: parameter '{k}'") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ParamError(f"{label}: {exc}") from None


def to_dict(params: Any) -> dict[str, Any]:
    """The parameters as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}


def describe(cls: type) -> list[dict[str, str]]:
    """Rows (name, type, default, help) for ``advbench show``."""
    types_ = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        tp = types_[f.name]
        type_name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        rows.append({"name": f.name, "type": type_name, "default": default, "help": f.metadata.get("help", "")})
    return rows
