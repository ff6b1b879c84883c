"""The network is never touched unless asked: ``run``, ``bench`` and ``Model.load`` of anything but an explicit
``hf:OWNER/NAME`` make no DNS lookup and open no internet socket.

Each check runs in a fresh interpreter whose first act is to install the suite's network guard
(:mod:`tests.netguard`, an audit hook) in its strict form: every ``socket.connect`` (but to a unix socket),
``socket.getaddrinfo``, ``socket.gethostbyname`` … is written to a log and refused with ConnectionRefusedError, as
on a machine without network. No ``HF_HUB_OFFLINE`` is set: advbench must not rely on it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.toyworld import TOY_SPEC

ROOT = Path(__file__).resolve().parents[1]

HOOK = r'''
import os, sys
from tests import netguard


def _log(what):
    with open(os.environ["ADVBENCH_NET_LOG"], "a") as log:
        log.write(what + "\n")


netguard.install(_log, allow_local=False)  # even a look-up of localhost is logged here
'''

CLI = HOOK + '''
from advbench import plugins
from tests.toyworld import ToyPlugin
plugins.register_plugin(ToyPlugin(), "toy-plugin")
from advbench.cli.main import _attach_commands, cli
_attach_commands()
cli(sys.argv[1:], prog_name="advbench")
'''

SPEC = 'name = "offline"\n' + TOY_SPEC


def _python(code, args, tmp_path, timeout=120):
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ADVBENCH_NET_LOG=str(log), HF_HOME=str(tmp_path / "hf"),
               ADVBENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    events = log.read_text().splitlines() if log.exists() else []
    return proc, events


def test_run_touches_no_network(tmp_path):
    proc, events = _python(CLI, ["run", "--domain", "toy", "--attack", "fullft", "--attack-arg", "steps=2",
                                 "--attack-arg", "batch_size=2", "--no-baseline", "--device", "cpu",
                                 "--results", tmp_path / "runs.jsonl", "--cache-dir", tmp_path / "stages"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events == []
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1


def test_bench_touches_no_network(tmp_path):
    spec = tmp_path / "offline.toml"
    spec.write_text(SPEC)
    proc, events = _python(CLI, ["bench", spec, "--results", tmp_path / "bench.jsonl", "--cache-dir",
                                 tmp_path / "stages", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events == []
    assert len((tmp_path / "bench.jsonl").read_text().splitlines()) == 1


LOAD = HOOK + '''
import json
from advbench.errors import DataError
from advbench.model import Model, check_folder
from advbench_plugins.world.build import model_dir

Model.load(model_dir())  # a local folder: the libraries are told local_files_only
out = {}
for name in sys.argv[1:]:
    for what, fn in (("load", Model.load), ("check", check_folder)):
        try:
            fn(name)
            out[f"{what} {name}"] = "loaded"
        except DataError as exc:
            out[f"{what} {name}"] = str(exc)
print(json.dumps(out))
'''


def test_model_load_reaches_a_hub_only_for_an_explicit_hf_id(tmp_path):
    names = ["someone/some-model", "hf:someone/some model", "hf:someone/some-model"]
    proc, events = _python(LOAD, names, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for what in ("load", "check"):
        assert out[f"{what} someone/some-model"].startswith("model folder someone/some-model does not exist; ")
        assert out[f"{what} someone/some-model"].endswith("(to download from the Hugging Face hub, write "
                                                          "hf:someone/some-model)")
        assert out[f"{what} hf:someone/some model"].startswith("hub id hf:someone/some model is malformed: write "
                                                               "hf:OWNER/NAME")
    # check_folder validates an hf: id's form without downloading; only load tries, and fails in one line
    assert out["check hf:someone/some-model"] == "loaded"
    failed = out["load hf:someone/some-model"]
    assert failed.startswith("model hf:someone/some-model could not be downloaded from the Hugging Face hub (")
    assert "place it locally instead" in failed and "save_pretrained('models/some-model'" in failed
    assert "\n" not in failed
    # the only network attempts are the hub look-ups of the explicit hf: id
    assert events and all(e.startswith(("socket.getaddrinfo", "socket.connect")) for e in events), events
    assert all("huggingface.co" in e or "443" in e for e in events), events


def test_plain_id_makes_no_network_attempt(tmp_path):
    proc, events = _python(LOAD, ["someone/some-model", "hf:bad//id"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events == []


# ------------------------------------------------------------------ the suite's own guard (tests/conftest.py)
def test_the_guard_refuses_the_internet_and_allows_loopback(network_attempts):
    import socket

    from tests.netguard import NetworkRefused

    with pytest.raises(NetworkRefused, match="example.com"):
        socket.create_connection(("example.com", 80), timeout=5)
    assert len(network_attempts) == 1 and network_attempts[0].startswith("socket.getaddrinfo ('example.com', 80")
    with socket.socket() as sock, pytest.raises(NetworkRefused):
        sock.connect(("93.184.215.14", 80))  # an address needs no look-up: the connection is refused
    assert network_attempts[1] == "socket.connect (('93.184.215.14', 80),)"
    with socket.socket() as server:  # loopback and unix sockets stay open (Ray, multiprocessing)
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=5).close()
        socket.create_connection(("localhost", server.getsockname()[1]), timeout=5).close()
    left, right = socket.socketpair(socket.AF_UNIX)
    left.close(), right.close()
    assert len(network_attempts) == 2


def test_the_guard_fails_a_test_that_swallows_the_refusal(tmp_path):
    (tmp_path / "test_inner.py").write_text(
        "import socket\n\n\n"
        "def test_swallows():\n"
        "    try:\n"
        "        socket.create_connection(('example.com', 80), timeout=5)\n"
        "    except OSError:\n"
        "        pass\n\n\n"
        "def test_loopback():\n"
        "    socket.getaddrinfo('localhost', 80)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "test_inner.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 failed, 1 passed" in proc.stdout
    assert "test_inner.py::test_swallows tried to reach the network" in proc.stdout
    assert "socket.getaddrinfo ('example.com', 80" in proc.stdout
