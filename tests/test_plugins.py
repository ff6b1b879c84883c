"""Plugin loading: entry points, allow-list, broken plugins, a third-party package, no torch at listing."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advbench import plugins
from advbench.errors import PluginError
from advbench.hookspecs import hookimpl
from advbench.interfaces import Defense

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


class ToyDefense(Defense):
    """Toy."""

    def protect(self, model, publisher_data, ctx):
        raise NotImplementedError


def test_builtins_come_from_entry_points(fresh_plugins):
    entry = plugins.registry("defense").entry("random")
    assert entry.source == "advbench:builtin_defenses"
    eps = {ep.name for ep in importlib.metadata.entry_points(group="advbench")}
    assert {"builtin_defenses", "builtin_attacks", "builtin_world"} <= eps


def test_allow_list(fresh_plugins, monkeypatch):
    monkeypatch.setenv("ADVBENCH_PLUGINS", "builtin_defenses")
    assert "random" in plugins.registry("defense")
    assert plugins.registry("attack").names() == []
    monkeypatch.setenv("ADVBENCH_PLUGINS", "")
    plugins.reset()
    assert plugins.registry("defense").names() == []


def test_broken_entry_point_is_skipped_with_warning(fresh_plugins, monkeypatch):
    real = importlib.metadata.entry_points

    def with_broken(group=None, **kw):
        eps = list(real(group=group, **kw))
        return eps + [importlib.metadata.EntryPoint("broken", "no_such_plugin_module_xyz", "advbench")]

    monkeypatch.setattr(importlib.metadata, "entry_points", with_broken)
    with pytest.warns(plugins.PluginWarning, match="broken.*failed to load"):
        plugins.get_plugin_manager()
    assert "fullft" in plugins.registry("attack")


def test_broken_hook_is_skipped_with_warning(temp_plugin):
    class Broken:
        @hookimpl
        def register_defenses(self, register):
            raise RuntimeError("boom")

    temp_plugin(Broken(), "broken-hook")
    with pytest.warns(plugins.PluginWarning, match="broken-hook.*boom"):
        names = plugins.registry("defense").names()
    assert "none" in names and "random" in names


def test_duplicate_across_plugins_names_both(temp_plugin):
    class Dup:
        @hookimpl
        def register_defenses(self, register):
            register("random", ToyDefense)

    temp_plugin(Dup(), "dup-plugin")
    with pytest.raises(PluginError, match="advbench:builtin_defenses.*dup-plugin|dup-plugin.*advbench:builtin"):
        plugins.registry("defense")


def test_temporary_plugin_registers_and_goes(temp_plugin):
    class Toy:
        @hookimpl
        def register_defenses(self, register):
            register("toy", ToyDefense, "a toy")

    temp_plugin(Toy(), "toy-plugin")
    assert plugins.get("defense", "toy") is ToyDefense
    plugins.unregister_plugin("toy-plugin")
    with pytest.raises(PluginError, match="Unknown defense 'toy'"):
        plugins.get("defense", "toy")


def _advbench(*args, env=None):
    code = ("import sys; from advbench.cli import main; sys.argv = ['advbench', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=ROOT)


def test_list_and_help_do_not_import_torch():
    for args in (["--help"], ["list"]):
        proc = _advbench(*args)
        assert proc.returncode == 0, proc.stderr
        assert "NO_TORCH" in proc.stderr
    assert "random" in _advbench("list").stdout


def test_example_plugin_installs_and_appears(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "plugins" / "example-plugin")], check=True)
    env = {"PYTHONPATH": str(target)}
    listing = _advbench("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "example-noise" in listing.stdout and "example-brightness" in listing.stdout
    assert "advbench-example-plugin:example" in listing.stdout
    shown = _advbench("show", "defense", "example-noise", env=env)
    assert shown.returncode == 0 and "scale" in shown.stdout and "0.01" in shown.stdout


def test_example_plugin_runs_in_a_cell(tmp_path, monkeypatch, fresh_plugins):
    from advbench.cells import Cell, PluginSpec
    from advbench.runner import RunOptions, run_cell
    from tests.toyworld import ToyPlugin, fast_attack_args

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "plugins" / "example-plugin")], check=True)
    monkeypatch.syspath_prepend(str(target))
    plugins.reset()
    plugins.register_plugin(ToyPlugin(), "toy-plugin")
    cell = Cell(PluginSpec("defense", "example-noise", {"scale": "0.05"}),
                PluginSpec("attack", "fullft", fast_attack_args()), PluginSpec("domain", "toy"))
    record = run_cell(cell, None, RunOptions(cache_dir=tmp_path / "cache", progress=False))
    assert record["defense_info"] == {"noise_scale": 0.05}
    assert record["provenance"]["plugins"]["defense"]["example-noise"]["plugin"] == "advbench-example-plugin:example"


def test_broken_command_hook_is_skipped(temp_plugin):
    import click

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no commands today")

    temp_plugin(Broken(), "broken-commands")
    group = click.Group()
    with pytest.warns(plugins.PluginWarning, match="broken-commands.*no commands today"):
        plugins.add_commands(group)
    assert "world" in group.commands  # the built-in world plugin's commands still arrive


def test_every_built_in_metric_says_what_it_measures():
    """MP and LI follow from ``higher_is_better``; ``measures``/``recognition`` say what a number is about, so a
    report can put identity, style and nudity judges side by side without special cases by name."""
    from advbench.interfaces import MEASURES
    from advbench.plugins import registry

    built_in = [e for e in registry("metric").entries() if e.source.startswith("advbench:builtin")]
    assert len(built_in) >= 20
    for entry in built_in:
        cls = entry.load()
        assert cls.measures in MEASURES, f"metric {entry.name!r} declares measures={cls.measures!r}"
        if cls.recognition:  # a hit rate: a better forgery is recognised more often
            assert cls.higher_is_better and cls.measures in ("identity", "style", "nudity"), entry.name
    assert registry("metric").get("identity-recognition").recognition
    assert registry("metric").get("deepface-recognition").recognition
    assert not registry("metric").get("identity-distance").recognition
    assert registry("metric").get("csd").measures == "style" and registry("metric").get("kid").measures == "fidelity"
