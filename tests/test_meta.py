"""Meta-test: every hook has a docstring, is documented in docs/plugins.md, and is exercised by a test."""

import inspect
from pathlib import Path

from advbench import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def test_hooks_exist():
    assert set(HOOKS) == {"register_defenses", "register_attacks", "register_datasets", "register_metrics",
                          "register_domains", "register_commands"}


def test_every_hook_has_a_docstring():
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    missing = [name for name in HOOKS if f"`{name}(" not in doc]
    assert not missing, f"hooks not documented in docs/plugins.md: {missing}"


def test_every_hook_is_tested():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != "test_meta.py")
    missing = [name for name in HOOKS if f"def {name}(" not in sources]
    assert not missing, f"hooks never implemented by a test plugin: {missing}"


def test_every_test_and_case_reliability_md_cites_exists():
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    missing = []
    for module, name in re.findall(r"(test_\w+)\.py(?:::(test_\w+))?", text):
        path = ROOT / "tests" / f"{module}.py"
        if not path.exists() or (name and f"def {name}(" not in path.read_text()):
            missing.append(f"{module}.py::{name}")
    for name in re.findall(r"`::(test_\w+)`", text):  # "::name" continues the module cited before it
        if not any(f"def {name}(" in p.read_text() for p in (ROOT / "tests").glob("test_*.py")):
            missing.append(name)
    battery = (ROOT / "tests" / "test_bad_inputs.py").read_text()
    cases = [c for cell in re.findall(r"cases? ((?:`[\w-]+`(?:, )?)+)", text) for c in re.findall(r"`([\w-]+)`", cell)]
    missing += [c for c in cases if f'"{c}":' not in battery]
    assert len(cases) >= 60 and missing == [], missing
