"""Shared test set-up: one torch thread (the suite runs on 2 shared cores) and isolated caches."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture
def temp_plugin():
    """Register plugin objects (modules or classes with hookimpls) for one test only."""
    from advbench import plugins

    names = []

    def register(obj, name):
        plugins.register_plugin(obj, name)
        names.append(name)

    yield register
    for name in names:
        plugins.unregister_plugin(name)
