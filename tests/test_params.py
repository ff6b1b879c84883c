"""Plugin parameters from CLI strings and TOML values."""

from dataclasses import dataclass
from typing import Literal

import pytest

from advbench.errors import ParamError
from advbench.params import build_params, check, describe, param, parse_assignments, to_dict


@dataclass(frozen=True)
class P:
    p: float = param(0.3, "ratio")
    steps: int = param(10, "steps")
    unit: Literal["tensors", "parameters"] = param("tensors", "unit")
    flag: bool = param(False, "a flag")
    modules: tuple[str, ...] = param(("to_q", "to_k"), "targets")
    name: str | None = param(None, "optional")

    def __post_init__(self):
        check(0 < self.p < 1, f"p must be in (0, 1), got {self.p}")


def test_cli_strings_are_coerced():
    got = build_params(P, parse_assignments(["p=0.5", "steps=3", "unit=parameters", "flag=true",
                                             "modules=to_v,to_out.0", "name=none"], "--x"), "defense 'd'")
    assert got == P(0.5, 3, "parameters", True, ("to_v", "to_out.0"), None)
    assert to_dict(got)["modules"] == ["to_v", "to_out.0"]


def test_toml_values_are_type_checked():
    assert build_params(P, {"p": 0.2, "steps": 4, "modules": ["a"]}, "x").modules == ("a",)
    with pytest.raises(ParamError, match="parameter 'steps' must be an integer"):
        build_params(P, {"steps": 2.5}, "defense 'd'")
    with pytest.raises(ParamError, match="must be true or false"):
        build_params(P, {"flag": "maybe"}, "defense 'd'")


def test_unknown_parameter_suggests():
    with pytest.raises(ParamError) as exc:
        build_params(P, {"stpes": "3"}, "attack 'fullft'")
    assert str(exc.value).startswith("Unknown parameter 'stpes' for attack 'fullft'. Did you mean 'steps'?")


def test_range_and_choice_errors_name_plugin():
    with pytest.raises(ParamError, match=r"defense 'random': p must be in \(0, 1\), got 1.5"):
        build_params(P, {"p": "1.5"}, "defense 'random'")
    with pytest.raises(ParamError, match="must be one of tensors, parameters"):
        build_params(P, {"unit": "layers"}, "defense 'random'")


def test_bad_assignment_syntax():
    with pytest.raises(ParamError, match="is not key=value"):
        parse_assignments(["p0.3"], "--defense-arg")


def test_describe_rows():
    rows = {r["name"]: r for r in describe(P)}
    assert rows["p"]["default"] == "0.3" and rows["p"]["help"] == "ratio" and rows["p"]["type"] == "float"
    assert "Literal" in rows["unit"]["type"]
