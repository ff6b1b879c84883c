"""Shared test set-up: one torch thread (the suite runs on 2 shared cores), isolated caches, and no network.

The network guard (:mod:`tests.netguard`) refuses every socket connection to a non-loopback address and every
look-up of a name other than this machine's while a test runs (setup, call and teardown), and fails the test even
when the code swallowed the refusal. A test that means to provoke it takes the ``network_attempts`` fixture.
"""

import os

import pytest

from tests import netguard

os.environ.setdefault("OMP_NUM_THREADS", "1")

NETWORK = {"active": False, "expected": False, "attempts": []}
netguard.install(NETWORK["attempts"].append, allow_local=True, active=lambda: NETWORK["active"])


def _guarded(item):
    """The body of a hook wrapper around one test phase: the guard on, and the phase failed on any attempt."""
    del NETWORK["attempts"][:]
    NETWORK["active"] = True
    try:
        result = yield
    finally:
        NETWORK["active"] = False
    if NETWORK["attempts"] and not NETWORK["expected"]:
        pytest.fail(f"{item.nodeid} tried to reach the network (tests run offline; allowed: loopback and unix "
                    f"sockets): {NETWORK['attempts'][0]}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from _guarded(item))


@pytest.fixture
def network_attempts():
    """The network attempts the guard refused during this test, which then does not fail because of them."""
    NETWORK["expected"] = True
    yield NETWORK["attempts"]
    NETWORK["expected"] = False


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
