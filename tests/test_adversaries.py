"""Adversary suites (issue 21 groundwork): the standard suite's content, its fingerprint, and loud refusals."""

from pathlib import Path

import pytest

from advbench import plugins
from advbench.adversaries import load_suite, parse_suite
from advbench.cells import PluginSpec
from advbench.errors import UserError

STANDARD = Path(__file__).resolve().parents[1] / "benchmarks" / "adversaries" / "standard.toml"


def test_standard_suite_covers_every_attack_at_one_step_cap():
    suite = load_suite(STANDARD)
    assert (suite.id, suite.version, suite.steps, suite.budgets) == ("standard", 1, 200, (25, 50, 100, 200))
    ids = [a.id for a in suite.adversaries]
    assert len(ids) == len(set(ids)) == 25
    trained = {name for name in plugins.registry("attack").names() if name != "no-attack"}
    assert {a.attack.name for a in suite.adversaries} == trained  # every attack plugin that trains
    for adversary in suite.adversaries:
        params = adversary.attack.resolved_params()
        default = PluginSpec("attack", adversary.attack.name,
                             {k: v for k, v in adversary.attack.params.items() if k not in ("steps", "lr")})
        assert params["steps"] == 200
        assert params["lr"] == pytest.approx(default.resolved_params()["lr"] * adversary.lr_multiplier)
    assert "fullft@lr×4" in ids and {a.threat_model for a in suite.adversaries} == {"compliant", "unconstrained"}


def _suite(**changes):
    data = {"id": "s", "version": 1, "steps": 8, "budgets": [2, 8], "lr_multipliers": [1, 2],
            "ladders": [{"attack": "fullft"}]}
    return {**data, **changes}


def test_fingerprint_follows_the_content():
    base = parse_suite(_suite())
    assert [a.id for a in base.adversaries] == ["fullft@lr×1", "fullft@lr×2"]
    assert parse_suite(_suite()).fingerprint() == base.fingerprint()
    assert parse_suite(_suite(version=2)).fingerprint() != base.fingerprint()
    other = parse_suite(_suite(ladders=[{"attack": "fullft", "params": {"batch_size": 4}}]))
    assert other.fingerprint() != base.fingerprint()


@pytest.mark.parametrize("changes, message", [
    ({"rungs": [1]}, "unknown key"),
    ({"id": ""}, "id must be a non-empty string"),
    ({"version": 0}, "version must be a positive integer"),
    ({"steps": -1}, "step cap"),
    ({"budgets": [2, 4]}, "last budget must be the step cap 8"),
    ({"budgets": [4, 2, 8]}, "increasing"),
    ({"lr_multipliers": [1, 0]}, "positive finite"),
    ({"lr_multipliers": [1, 1]}, "repeat a value"),
    ({"ladders": []}, "at least one"),
    ({"ladders": [{"attack": "fulft"}]}, "Did you mean 'fullft'"),
    ({"ladders": [{"attack": "fullft", "params": {"lr": 1e-3}}]}, "may not set lr"),
    ({"ladders": [{"attack": "fullft", "params": {"batch_size": 0}}]}, "ladder 1: .*batch_size"),
    ({"ladders": [{"attack": "fullft", "threat_model": "evil"}]}, "threat_model must be one of"),
    ({"ladders": [{"attack": "fullft"}, {"attack": "fullft"}]}, "appear twice; give one of the ladders a label"),
    ({"ladders": [{"attack": "no-attack"}]}, "no lr parameter"),
])
def test_bad_suites_are_one_line_errors(changes, message):
    with pytest.raises(UserError, match=message) as info:
        parse_suite(_suite(**changes), "suite.toml")
    assert str(info.value).startswith("suite.toml") and "\n" not in str(info.value)


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_suite(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("id = [")
    with pytest.raises(UserError, match="not valid TOML"):
        load_suite(broken)
