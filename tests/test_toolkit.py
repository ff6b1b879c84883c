"""The defense toolkit: defenses and attacks never import each other, one seeded batcher, shared layer finders."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.adapters import attention_projections
from advbench.data import examples_to_tensor
from advbench.interfaces import Example

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins" / "advbench_plugins"

# Files that call ``randperm`` for something other than drawing training batches (none today). Batch queues
# belong in advbench/finetune.py (SeededBatcher) only; add a file here with the reason if it draws, say, a
# random freeze mask or a world's class order.
RANDPERM_ALLOWED = {"advbench/finetune.py": "SeededBatcher, the one seeded batcher",
                    "plugins/advbench_plugins/defenses/darkminer.py": "the k pool images mined once per loop (a subset "
                                                                     "drawn once, not a batch queue)"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PLUGINS.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in the file (relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # from pkg import module
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None)
                   in ("import_module", "__import__"))):
            out.append((node.lineno, node.args[0].value))
    return out


@pytest.mark.parametrize("side, other", [("defenses", "attacks"), ("attacks", "defenses")])
def test_defenses_and_attacks_never_import_each_other(side, other):
    forbidden = f"advbench_plugins.{other}"
    files = sorted((PLUGINS / side).rglob("*.py"))
    assert files
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in files
           for line, name in _imported_modules(path) if name == forbidden or name.startswith(forbidden + ".")]
    assert not bad, f"{side} must not import {other}; move shared code to advbench/adapters.py:\n" + "\n".join(bad)


def test_import_scan_sees_relative_and_lazy_imports():
    source = ("def f():\n    from ..attacks._common import rewrite_caption\n"
              "    from advbench_plugins import attacks\n"
              "    importlib.import_module('advbench_plugins.attacks.lora')\n")
    names = [name for _, name in _imported_modules(PLUGINS / "defenses" / "fake.py", source)]
    assert "advbench_plugins.attacks._common" in names and "advbench_plugins.attacks" in names
    assert "advbench_plugins.attacks.lora" in names


def test_one_batcher_draws_batches():
    users = {}
    for path in sorted((ROOT / "advbench").rglob("*.py")) + sorted(PLUGINS.parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and "randperm" in (getattr(node.func, "attr", None),
                                                            getattr(node.func, "id", None)):
                users.setdefault(path.relative_to(ROOT).as_posix(), []).append(node.lineno)
    assert "advbench/finetune.py" in users
    extra = {f: lines for f, lines in users.items() if f not in RANDPERM_ALLOWED}
    assert not extra, f"draw batches with advbench.finetune.SeededBatcher, not a new randperm queue: {extra}"


def test_adapters_and_attack_modules_import_no_torch():
    code = ("import sys, advbench.adapters, advbench_plugins.attacks.fullft, advbench_plugins.attacks.lora, "
            "advbench_plugins.attacks.dreambooth; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ RoleBatches
def _examples(prefix: str, n: int) -> list[Example]:
    return [Example(text=f"{prefix}{i}", cls=prefix, image=np.full((8, 8, 3), 10 * i + (prefix == "L"), np.uint8))
            for i in range(n)]


def _reference(sizes: dict[str, int], counts: dict[str, int], seed: int, draws: int) -> list[dict[str, list[int]]]:
    """The batches by hand: per role (illegal first), refill with randperm(n) while the queue is short."""
    generator = torch.Generator().manual_seed(seed)
    queues = {role: [] for role in sizes}
    out = []
    for _ in range(draws):
        batch = {}
        for role in sizes:  # illegal, then legal
            while len(queues[role]) < sizes[role]:
                queues[role] += torch.randperm(counts[role], generator=generator).tolist()
            batch[role], queues[role] = queues[role][:sizes[role]], queues[role][sizes[role]:]
        out.append(batch)
    return out


@pytest.mark.parametrize("batch_size, n_legal, sizes", [(4, 3, {"illegal": 2, "legal": 2}),
                                                         (5, 3, {"illegal": 3, "legal": 2}),
                                                         (4, 0, {"illegal": 4})])
def test_role_batches_draw_the_hand_computed_batches(batch_size, n_legal, sizes):
    from advbench_plugins.defenses.fg_bilevel import RoleBatches

    illegal, legal = _examples("I", 5), _examples("L", n_legal)
    pools = {"illegal": illegal, "legal": legal}
    batches = RoleBatches(illegal, legal, batch_size, 8)
    generator = torch.Generator().manual_seed(7)
    got = [batches.draw(generator) for _ in range(5)]
    want = _reference(sizes, {r: len(pools[r]) for r in sizes}, 7, 5)
    for drawn, ref in zip(got, want):
        assert list(drawn) == list(sizes)
        for role, idx in ref.items():
            pixels, captions = drawn[role]
            assert captions == [pools[role][i].text for i in idx]
            assert torch.equal(pixels, examples_to_tensor(pools[role], 8)[idx])


def test_role_batches_resume_from_state_dict():
    from advbench_plugins.defenses.fg_bilevel import RoleBatches

    illegal, legal = _examples("I", 5), _examples("L", 3)
    straight = RoleBatches(illegal, legal, 4, 8)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        straight.draw(generator)
    state = json.loads(json.dumps(straight.state_dict()))  # plain data: it goes into a saved training state
    rng = generator.get_state()
    assert set(state) == {"illegal", "legal"} and any(s["queue"] for s in state.values())
    expected = [straight.draw(generator) for _ in range(4)]

    resumed = RoleBatches(illegal, legal, 4, 8)
    resumed.load_state_dict(state)
    generator = torch.Generator()
    generator.set_state(rng)
    for want in expected:
        got = resumed.draw(generator)
        assert {r: c for r, (_, c) in got.items()} == {r: c for r, (_, c) in want.items()}
        assert all(torch.equal(got[r][0], want[r][0]) for r in want)
    with pytest.raises(ValueError, match="roles"):
        RoleBatches(illegal, [], 4, 8).load_state_dict(state)


# -------------------------------------------------------------------------------- attention_projections
@pytest.fixture(scope="module")
def world_model():
    from advbench.model import Model
    from advbench_plugins.world.build import model_dir

    return Model.load(model_dir())


def test_cross_attention_keys_and_values_read_the_text_encoder(world_model):
    unet = world_model.unet
    found = attention_projections(unet, attention=("attn2",), projections=("to_k", "to_v"))
    want = [n for n, _ in unet.named_modules() if ".attn2.to_k" in n or ".attn2.to_v" in n]
    assert want and list(found) == want  # exactly those, in the UNet's module order
    hidden = world_model.text_encoder.config.hidden_size
    assert all(isinstance(m, torch.nn.Linear) and m.in_features == hidden for m in found.values())


def test_self_attention_only(world_model):
    unet = world_model.unet
    found = attention_projections(unet, attention=("attn1",))
    blocks = [n for n, m in unet.named_modules() if n.endswith(".attn1")]
    assert blocks and len(found) == 4 * len(blocks)  # to_q, to_k, to_v, to_out.0 of each
    assert all(".attn1." in n and ".attn2" not in n for n in found)
    for name in (n for n in found if n.endswith((".to_k", ".to_v"))):  # keys and values read the image tokens
        query = unet.get_submodule(name.rsplit(".", 1)[0] + ".to_q")
        assert found[name].in_features == query.in_features


# ------------------------------------------------------------------------------------ tokens, captions
def test_new_token_embeddings_start_at_the_phrase_and_only_they_learn():
    from advbench.adapters import add_token_embeddings
    from advbench.errors import DataError
    from advbench.testing import tiny_model

    model = tiny_model()
    before = model.text_encoder.get_input_embeddings().weight.detach().clone()
    phrase_ids = model.tokenizer("pattern", add_special_tokens=False).input_ids
    new = add_token_embeddings(model, [(["<a>", "<a>_1"], "pattern"), (["<b>"], "")], "the test")
    table = new.table
    assert table.shape[0] == before.shape[0] + 3
    assert new.ids == model.tokenizer.convert_tokens_to_ids(["<a>", "<a>_1", "<b>"])
    assert torch.allclose(table[new.ids[0]], before[phrase_ids].mean(0))
    assert torch.equal(table[new.ids[0]], table[new.ids[1]])
    assert torch.allclose(table[new.ids[2]], before.mean(0))  # an empty phrase: the mean of every old row
    optimizer = torch.optim.AdamW([table], lr=0.1, weight_decay=0.5)
    table.sum().backward()
    assert torch.count_nonzero(table.grad.abs().sum(1)) == 3  # the hook zeroed every other row's gradient
    start = table.detach().clone()
    optimizer.step()
    assert not torch.equal(table[:before.shape[0]], before)  # weight decay moved the old rows ...
    new.restore()
    assert torch.equal(table[:before.shape[0]], before)  # ... and restore put them back, bit for bit
    assert not torch.equal(table[new.ids], start[new.ids])
    new.remove()
    table.grad = None
    table.sum().backward()
    assert torch.count_nonzero(table.grad.abs().sum(1)) == table.shape[0]  # the hook is gone
    with pytest.raises(DataError, match="already has the test's token '<a>'"):
        add_token_embeddings(model, [(["<a>"], "pattern")], "the test")


def test_noun_prompts_replace_each_class_name_by_its_noun_and_cycle():
    from advbench.adapters import noun_prompts, rewrite_caption

    triples = [("a photo of Ada", "Ada", "person"), ("Ada smiling", "Ada", "person"), ("a bridge", "Bo", "painting"),
               ("a photo of Ada", "Ada", "person")]
    assert noun_prompts(triples, 5) == ["a photo of person", "painting, a bridge", "person smiling",
                                        "a photo of person", "painting, a bridge"]
    assert rewrite_caption("Ada at sea", "Ada", "") == "at sea" and rewrite_caption("sea", "Ada", "") == "sea"
