"""The network is never touched unless asked: ``run``, ``bench`` and ``Model.load`` of anything but an explicit
``hf:OWNER/NAME`` make no DNS lookup and open no internet socket.

Each check runs in a fresh interpreter whose first act is ``sys.addaudithook``: every ``socket.connect`` (to an
internet address), ``socket.getaddrinfo``, ``socket.gethostbyname`` … is written to a log and refused with
ConnectionRefusedError, as on a machine without network. No ``HF_HUB_OFFLINE`` is set: advbench must not rely on it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.toyworld import TOY_SPEC

ROOT = Path(__file__).resolve().parents[1]

HOOK = r'''
import os, socket, sys

_LOG = os.environ["ADVBENCH_NET_LOG"]
_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
           "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"}


def _no_network(event, args):
    if event not in _EVENTS:
        return
    if event == "socket.connect" and getattr(args[0], "family", None) == socket.AF_UNIX:
        return  # a local socket file, not the network
    with open(_LOG, "a") as log:
        log.write(f"{event} {args[1:]!r}\n")
    raise ConnectionRefusedError(f"test_offline: network access refused ({event})")


sys.addaudithook(_no_network)
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
