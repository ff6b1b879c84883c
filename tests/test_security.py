"""Security: no code path of advbench or its built-in plugins unpickles a file or runs code from a hub, and a
broken plugin cannot take the others down.

The source scan reads every .py file's syntax tree (not its text, so comments and docstrings do not count) and
refuses: ``torch.load`` without ``weights_only=True``; ``np.load`` with ``allow_pickle=True`` (numpy's default is
False); the pickle family (``pickle``, ``cPickle``, ``_pickle``, ``cloudpickle``, ``dill``, ``joblib``,
``shelve``) and ``read_pickle``; ``torch.hub``; ``from_pretrained(..., use_safetensors=False)`` and
``trust_remote_code=True``; an open_clip model built without ``weights_only=True``; and a loading call given a
``.bin``/``.ckpt``/``.pt``/``.pth``/``.pkl``/``.pickle`` path.
"""

import ast
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [ROOT / "advbench", ROOT / "plugins" / "advbench_plugins"]
PICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
OPEN_CLIP_BUILDERS = {"create_model", "create_model_and_transforms", "create_model_from_pretrained", "load_checkpoint"}


def _dotted(node: ast.AST) -> str:
    """``torch.hub.load`` for the expression torch.hub.load; "" for anything that is not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def _keyword(call: ast.Call, name: str):
    """The constant value of keyword ``name`` (``...`` when absent, None when not a constant)."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else None
    return ...


def _strings(node: ast.AST) -> list[str]:
    """The string constants in an argument (a literal, an f-string's parts, a path joined with /)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def offences(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: what`` for every unsafe pattern in ``source``."""
    found = []

    def bad(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLERS:
                    bad(node, f"import {alias.name} (pickle executes code on load)")
                if alias.name.startswith("torch.hub"):
                    bad(node, "import torch.hub (downloads and runs code)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in PICKLERS:
                bad(node, f"from {module} import ... (pickle executes code on load)")
            if module.startswith("torch.hub") or (module == "torch" and any(a.name == "hub" for a in node.names)):
                bad(node, "torch.hub (downloads and runs code)")
        elif isinstance(node, ast.Attribute) and _dotted(node) == "torch.hub":
            bad(node, "torch.hub (downloads and runs code)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else name
            if name in ("torch.load", "torch.serialization.load") and _keyword(node, "weights_only") is not True:
                bad(node, f"{name}(...) without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (..., False):
                bad(node, f"{name}(...) with allow_pickle other than False")
            if name.split(".")[0] in PICKLERS or attr in ("read_pickle", "Unpickler"):
                bad(node, f"{name or attr}(...) unpickles")
            if attr == "from_pretrained" and _keyword(node, "use_safetensors") not in (..., True):
                bad(node, "from_pretrained(..., use_safetensors=False) may unpickle a .bin file")
            if _keyword(node, "trust_remote_code") not in (..., False):
                bad(node, f"{name or attr}(..., trust_remote_code=...) runs code from a hub")
            if name.startswith("timm.") and attr == "create_model":  # timm's only source of weights is the hub
                if _keyword(node, "pretrained") is not False:
                    bad(node, "timm create_model(...) without pretrained=False downloads weights")
            elif attr in OPEN_CLIP_BUILDERS and _keyword(node, "weights_only") is not True:
                bad(node, f"open_clip {attr}(...) without weights_only=True may unpickle a checkpoint")
            if "load" in attr.lower() or attr == "from_pretrained":
                args = [*node.args, *(kw.value for kw in node.keywords)]
                if any(s.lower().endswith(PICKLE_SUFFIXES) for a in args for s in _strings(a)):
                    bad(node, f"{name or attr}(...) loads a pickle-format (.bin/.ckpt/.pt/.pkl) file")
    return found


def _sources():
    for folder in SCANNED:
        yield from sorted(folder.rglob("*.py"))


def test_scanned_folders_hold_the_sources():
    files = list(_sources())
    assert len(files) > 40 and ROOT / "advbench" / "runner.py" in files


def test_no_source_unpickles_or_runs_hub_code():
    found = []
    for path in _sources():
        found += offences(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "unsafe loading:\n" + "\n".join(found)


@pytest.mark.parametrize("code", [
    "import torch\ntorch.load(path)",
    "import torch\ntorch.load(path, weights_only=False)",
    "import torch\ntorch.load(path, map_location='cpu', weights_only=flag)",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "import pickle",
    "import cPickle as pickle",
    "from dill import loads",
    "import joblib.numpy_pickle",
    "x = pickle.loads(blob)",
    "import pandas as pd\npd.read_pickle(path)",
    "import torch\nmodel = torch.hub.load('repo', 'model')",
    "from torch import hub",
    "UNet2DConditionModel.from_pretrained(folder, use_safetensors=False)",
    "AutoModel.from_pretrained(folder, trust_remote_code=True)",
    "open_clip.create_model_and_transforms(name, pretrained=path)",
    "import timm\ntimm.create_model(name)",
    "import timm\ntimm.create_model(name, pretrained=True)",
    "model.load_state_dict(load_file(folder / 'model.ckpt'))",
    "state = load_weights(f'{folder}/pytorch_model.bin')",
])
def test_the_scan_catches(code):
    assert len(offences(code)) >= 1, code


@pytest.mark.parametrize("code", [
    "import torch\nstate = torch.load(path, weights_only=True)",
    "import numpy as np\nnp.load(path)\nnp.load(path, allow_pickle=False)",
    "UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)",
    "from safetensors.torch import load_file\nload_file(folder / 'model.safetensors')",
    "legacy = list(folder.glob('*.bin'))",
    '"""Checkpoints are .bin files; torch.load(path) and import pickle are mentioned here only."""',
    "open_clip.create_model_and_transforms(name, pretrained=path, weights_only=True)",
    "import timm\ntimm.create_model(name, pretrained=False, num_classes=0)",
])
def test_the_scan_passes(code):
    assert offences(code) == [], code


def test_a_plugin_that_raises_at_import_is_named_and_skipped(tmp_path, monkeypatch):
    """(tests/test_plugins.py::test_broken_entry_point_is_skipped_with_warning covers a module that does not
    exist; this one exists and raises while it is imported.)"""
    import importlib.metadata

    from advbench import plugins

    (tmp_path / "advbench_raising_plugin.py").write_text(textwrap.dedent("""
        raise RuntimeError("this plugin is broken on purpose")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points

    def with_raising(group=None, **kw):
        eps = list(real(group=group, **kw))
        return eps + [importlib.metadata.EntryPoint("raising", "advbench_raising_plugin", "advbench")]

    monkeypatch.setattr(importlib.metadata, "entry_points", with_raising)
    plugins.reset()
    try:
        with pytest.warns(plugins.PluginWarning, match="raising.*failed to load.*broken on purpose"):
            plugins.get_plugin_manager()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert "fullft" in plugins.registry("attack") and "random" in plugins.registry("defense")
    finally:
        plugins.reset()
