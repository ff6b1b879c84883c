"""Every committed bench spec parses and validates against the installed plugins."""

import re
from pathlib import Path

import pytest

from advbench.errors import UserError
from advbench.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.toml"))


def test_there_are_specs():
    assert {p.stem for p in SPECS} >= {"ci", "freezeasguard", "attacks", "calibration"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_validates(path):
    spec = load_spec(path)
    assert spec.cells
    assert any(cell.defense.name == "none" for cell in spec.cells)


def test_sweep_expands_labels():
    spec = load_spec(Path(__file__).resolve().parents[1] / "benchmarks" / "freezeasguard.toml")
    labels = {c.defense.display_label() for c in spec.cells}
    assert labels == {"none", "R[p=0.1]", "R[p=0.3]", "R[p=0.5]", "FG[p=0.1]", "FG[p=0.3]", "FG[p=0.5]"}
    assert len(spec.cells) == 3 * 7 * 1 * 3


def test_spec_budgets_apply_to_anytime_attacks_and_entries_override(tmp_path):
    spec = tmp_path / "b.toml"
    spec.write_text('''
budgets = [50, 100, 200]
[[domains]]
name = "portraits"
[[defenses]]
name = "none"
[[attacks]]
name = "fullft"
[[attacks]]
name = "lora"
budgets = [25, 100]
[[attacks]]
name = "no-attack"
''')
    cells = {c.attack.name: c for c in load_spec(spec).cells}
    assert cells["fullft"].resolved_budgets() == (50, 100, 200)
    assert cells["lora"].resolved_budgets() == (25, 100) and cells["lora"].attack.params["steps"] == 100
    assert cells["no-attack"].resolved_budgets() is None and "budgets" not in cells["no-attack"].to_json()


@pytest.mark.parametrize("text, message", [
    ('budgets = [200, 100]', "increasing positive integers"),
    ('budgets = [50, 100]', "the spec's budgets end at 100 but attack 'fullft(steps=200)' has steps = 200"),
])
def test_spec_budget_errors(tmp_path, text, message):
    spec = tmp_path / "b.toml"
    spec.write_text(text + '''
[[domains]]
name = "portraits"
[[defenses]]
name = "none"
[[attacks]]
name = "fullft"
params = { steps = 200 }
''')
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(spec)


class _Follower:
    """A defense whose `adaptation` can follow the cell's attack (as IMMA's does)."""

    @staticmethod
    def make():
        from dataclasses import dataclass
        from typing import Literal

        from advbench.hookspecs import hookimpl
        from advbench.interfaces import Defense, ProtectedModel
        from advbench.params import param

        class Follower(Defense):
            follows_attack = "adaptation"

            @dataclass(frozen=True)
            class Params:
                adaptation: Literal["fullft", "lora", "matched"] = param("fullft", "the simulated attack")

            def protect(self, model, publisher_data, ctx):
                return ProtectedModel(model)

        class Plugin:
            @hookimpl
            def register_defenses(self, register):
                register("follower", Follower)

        return Plugin()


def test_a_matched_defense_parameter_takes_the_cells_attack(temp_plugin, tmp_path):
    from advbench.cells import Cell, PluginSpec
    from advbench.results import cell_id

    temp_plugin(_Follower.make(), "follower-plugin")
    spec = tmp_path / "m.toml"
    spec.write_text('[[domains]]\nname = "portraits"\n[[defenses]]\nname = "none"\n[[defenses]]\nname = "follower"\n'
                    'params = { adaptation = "matched" }\n[[defenses]]\nname = "follower"\nparams = { adaptation = '
                    '"lora" }\n[[attacks]]\nname = "fullft"\n[[attacks]]\nname = "lora"\n')
    cells = load_spec(spec).cells
    matched = [c for c in cells if c.defense.display_label() == "follower(adaptation=matched)"]
    assert [(c.attack.name, c.defense.params["adaptation"]) for c in matched] == [("fullft", "fullft"),
                                                                                 ("lora", "lora")]
    fixed = next(c for c in cells if c.defense.display_label() == "follower(adaptation=lora)" and c.attack.name == "lora")
    # the same simulated attack, so the same protect stage, but a row of its own (the label) in the leaderboard
    assert matched[1].to_json()["defense"]["params"] == fixed.to_json()["defense"]["params"]
    assert cell_id(matched[1].to_json()) != cell_id(fixed.to_json())
    with pytest.raises(UserError, match="follows the cell's attack .*'no-attack' cannot be simulated"):
        Cell(PluginSpec("defense", "follower", {"adaptation": "matched"}), PluginSpec("attack", "no-attack"),
             PluginSpec("domain", "portraits"))


def _portraits_spec(tmp_path, body: str):
    """A spec file on the portraits domain with ``body`` (its [[defenses]] and [[attacks]])."""
    spec = tmp_path / "pairs.toml"
    spec.write_text('[[domains]]\nname = "portraits"\n' + body)
    return spec


def test_a_defense_meets_only_the_attacks_it_names(tmp_path):
    spec = _portraits_spec(tmp_path, '''
[[defenses]]
name = "none"
[[defenses]]
name = "random"
label = "R"
attacks = ["fullft", "plain"]
[[attacks]]
name = "fullft"
[[attacks]]
name = "lora"
label = "plain"
[[attacks]]
name = "no-attack"
''')
    pairs = [(c.defense.display_label(), c.attack.display_label()) for c in load_spec(spec).cells]
    assert pairs == [("none", "fullft"), ("none", "plain"), ("none", "no-attack"), ("R", "fullft"), ("R", "plain")]


@pytest.mark.parametrize("attacks, message", [
    ('["ful1ft"]', "names attack 'ful1ft', which no [[attacks]] entry has. Did you mean 'fullft'?"),
    ('[]', "attacks must be a non-empty list"),
    ('"fullft"', "attacks must be a non-empty list"),
])
def test_a_defense_naming_an_unknown_attack_is_refused(tmp_path, attacks, message):
    spec = _portraits_spec(tmp_path, f'''
[[defenses]]
name = "random"
attacks = {attacks}
[[attacks]]
name = "fullft"
''')
    with pytest.raises(UserError, match=re.escape(message)):
        load_spec(spec)


def test_attacks_is_a_defense_key_only(tmp_path):
    spec = _portraits_spec(tmp_path, '''
[[defenses]]
name = "none"
[[attacks]]
name = "fullft"
attacks = ["lora"]
''')
    with pytest.raises(UserError, match="unknown key 'attacks'"):
        load_spec(spec)
