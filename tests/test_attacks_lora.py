"""The `lora` attack: only adapter weights train, the LoRA file reloads into diffusers, freeze-mask rules."""

import copy

import pytest
import torch

import advbench.adapters as adapters
from advbench.errors import ConstraintError, ParamError
from advbench.interfaces import AttackData, Context, FreezeMask, ProtectedModel
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.attacks.lora import Lora

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module")
def data():
    return AttackData("class_1", tiny_dataset(n_classes=2, n_per_class=4).examples("class_1"), "illegal")


def attack(**kw):
    a = Lora(Lora.Params(**{"steps": 2, "batch_size": 2, **kw}))
    a.name = "lora"
    return a


def ctx(tmp_path, threat="compliant"):
    return Context(seed=0, progress=False, threat_model=threat, work_dir=tmp_path)


def state(module):
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def is_target_weight(name):
    return name.endswith(".weight") and any(name[: -len(".weight")].endswith("." + t) for t in TARGETS)


def test_only_adapter_weights_train_and_merge_changes_only_targets(tmp_path, data, monkeypatch):
    base = tiny_model()
    before = state(base.unet)
    seen = {}
    merge = adapters.merge_lora

    def spy(module):  # the adapted UNet just before its adapters are merged
        seen.update(state(module))
        merge(module)

    monkeypatch.setattr(adapters, "merge_lora", spy)
    adapted = attack().adapt(ProtectedModel(base), data, ctx(tmp_path))
    lora = {n: t for n, t in seen.items() if "lora_" in n}
    assert lora and any(t.abs().sum() > 0 for n, t in lora.items() if "lora_B" in n)  # the adapters learned
    for name, tensor in seen.items():
        if "lora_" not in name:  # base weights (``...base_layer.weight`` after wrapping) are bit-identical
            assert torch.equal(tensor, before[name.replace(".base_layer", "")]), name
    after = state(adapted.unet)
    assert set(after) == set(before)  # merged: a plain UNet with the original keys
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(is_target_weight(n) for n in changed)
    assert all(torch.equal(base.unet.state_dict()[n], before[n]) for n in before)  # the protected model untouched


def test_saved_lora_file_reproduces_outputs_in_a_fresh_diffusers_unet(tmp_path, data):
    base = tiny_model()
    adapted = attack(rank=2, alpha=8.0, steps=3).adapt(ProtectedModel(base), data, ctx(tmp_path))
    file = tmp_path / adapters.LORA_FILE
    assert file.exists()
    fresh = copy.deepcopy(base.unet)
    fresh.load_lora_adapter(str(file), prefix="unet")
    g = torch.Generator().manual_seed(1)
    x, hidden = torch.randn(2, *base.latent_shape, generator=g), torch.randn(2, 16, 32, generator=g)
    t = torch.tensor([50, 700])
    with torch.no_grad():
        want, got = adapted.unet(x, t, hidden).sample, fresh(x, t, hidden).sample
        plain = base.unet(x, t, hidden).sample
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_compliant_attaches_no_adapter_to_frozen_modules(tmp_path, data, monkeypatch):
    base = tiny_model()
    names = [n for n, _ in base.unet.named_parameters()]
    targets = sorted(n for n in names if is_target_weight(n))
    frozen = set(targets[::2]) | set(names[::5])
    protected = ProtectedModel(base, [FreezeMask({n: n in frozen for n in names})])
    before = state(base.unet)
    wrapped = []
    add = adapters.add_lora
    monkeypatch.setattr(adapters, "add_lora", lambda module, mods, *a: wrapped.extend(mods) or add(module, mods, *a))

    compliant = attack(steps=3).adapt(protected, data, ctx(tmp_path / "c"))
    assert wrapped and not {f"{m}.weight" for m in wrapped} & frozen
    assert all(torch.equal(compliant.unet.state_dict()[n], before[n]) for n in frozen)
    assert any(not torch.equal(compliant.unet.state_dict()[n], before[n]) for n in set(targets) - frozen)

    unconstrained = attack(steps=3).adapt(protected, data, ctx(tmp_path / "u", "unconstrained"))
    changed = {n for n in targets if not torch.equal(unconstrained.unet.state_dict()[n], before[n])}
    assert changed & frozen  # the unconstrained attacker ignores the mask


def test_all_targets_frozen_is_a_constraint_error(tmp_path, data):
    base = tiny_model()
    mask = FreezeMask({n: is_target_weight(n) for n, _ in base.unet.named_parameters()})
    with pytest.raises(ConstraintError, match="no adapter"):
        attack().adapt(ProtectedModel(base, [mask]), data, ctx(tmp_path))


def test_unknown_target_modules_is_a_user_error(tmp_path, data):
    with pytest.raises(ParamError, match="match no module"):
        attack(target_modules=("to_qq",)).adapt(ProtectedModel(tiny_model()), data, ctx(tmp_path))


@pytest.mark.parametrize("bad", [{"rank": "0"}, {"alpha": "-1"}, {"dropout": "1.0"}, {"steps": "0"}, {"lr": "0"},
                                 {"target_modules": ""}])
def test_params_are_validated(bad):
    with pytest.raises(ParamError):
        build_params(Lora.Params, bad, "attack 'lora'")


def test_params_parse_from_strings():
    p = build_params(Lora.Params, {"rank": "8", "target_modules": "to_k,to_v", "steps": "50"}, "attack 'lora'")
    assert (p.rank, p.target_modules, p.steps) == (8, ("to_k", "to_v"), 50)
