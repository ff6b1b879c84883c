"""Every committed bench spec parses and validates against the installed plugins."""

from pathlib import Path

import pytest

from advbench.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.toml"))


def test_there_are_specs():
    assert {p.stem for p in SPECS} >= {"ci", "freezeasguard", "attacks", "budget"}


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
