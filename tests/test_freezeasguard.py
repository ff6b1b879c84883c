"""FreezeAsGuard: Eq. 4 bookkeeping, the one-backprop mask gradient, exact rounding, data isolation, compliance."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import advbench.finetune as engine
from advbench.data import InMemoryDataset, split
from advbench.errors import DataError, ParamError
from advbench.interfaces import AttackData, Context, Example, PublisherData
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.defenses import fg_bilevel
from advbench_plugins.defenses.fg_bilevel import BilevelConfig, BilevelState, RoleBatches, learn_mask
from advbench_plugins.defenses.freezeasguard import FreezeAsGuard

FAST = {"mask_steps": 2, "lower_steps": 2, "batch_size": 4, "init_ft_steps": 2, "init_ft_batch_size": 4}
ILLEGAL, LEGAL = ["class_0", "class_1"], ["class_2", "class_3"]


def defense(**kw):
    return FreezeAsGuard(build_params(FreezeAsGuard.Params, {**FAST, **kw}, "defense 'freezeasguard'"))


def publisher_of(data) -> PublisherData:
    return PublisherData(illegal={c: data.publisher[c] for c in ILLEGAL}, legal={c: data.publisher[c] for c in LEGAL})


@pytest.fixture(scope="module")
def data():
    return split(tiny_dataset(n_classes=4, n_per_class=10), ILLEGAL + LEGAL, seed=0)


def ctx_for(tmp_path, name="run", cache=True):
    return Context(seed=0, progress=False, work_dir=tmp_path / name,
                   cache_dir=tmp_path / "cache" if cache else None)


def perturbed(unet, scale=0.02, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=gen) for n, p in unet.named_parameters()}


# ------------------------------------------------------------------------------------------ the math
def test_eq4_holds_after_every_lower_and_mask_step(data, monkeypatch):
    """θ(m) = m⊙θ_pre + (1−m)⊙θ_ft and θ_d = θ_pre − θ_ft after every update, against an explicit 3-copy run."""
    model = tiny_model()
    pre = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    ft = perturbed(model.unet)
    w = fg_bilevel.initial_w(len(pre), -0.4, 0) + 0.3 * torch.rand(len(pre), generator=torch.Generator().manual_seed(2))
    state = BilevelState(model.unet, pre, ft, w, 0.2)
    model.text_encoder.requires_grad_(False)
    reference = {"ft": [ft[n].clone() for n in state.names]}  # the simulated user's weights, kept explicitly
    checks = []
    cfg = BilevelConfig(mask_steps=3, lower_steps=2, batch_size=4, user_lr=0.5, mask_lr=1e3)

    def flat(tensors):
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def check():
        m = state.mask().tolist()
        eq4 = [m_i * pre[n] + (1 - m_i) * f for m_i, n, f in zip(m, state.names, reference["ft"])]  # three copies
        torch.testing.assert_close(flat(state.params), flat(eq4), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat(state.diff), flat([pre[n] - f for n, f in zip(state.names, reference["ft"])]),
                                   rtol=1e-5, atol=1e-6)
        checks.append(1)

    lower, set_w = BilevelState.lower_update, BilevelState.set_w

    def lower_update(self, grads, lr):
        m = self.mask().tolist()
        # Plain SGD on θ_ft: ∂L/∂θ_ft = (1 − m) ∂L/∂θ(m) by the chain rule through Eq. 4.
        reference["ft"] = [f - lr * (1 - m_i) * g for f, g, m_i in zip(reference["ft"], grads, m)]
        lower(self, grads, lr)
        check()

    def move_w(self, new_w):
        set_w(self, new_w)
        check()

    monkeypatch.setattr(BilevelState, "lower_update", lower_update)
    monkeypatch.setattr(BilevelState, "set_w", move_w)
    batches = RoleBatches(publisher_of(data).illegal["class_0"], publisher_of(data).legal["class_2"], 4, 32)
    accelerator = engine._accelerator("no", "cpu")
    try:
        result = learn_mask(model, state, batches, cfg, Context(progress=False), accelerator)
    finally:
        engine._release_accelerator()
    assert len(checks) == cfg.mask_steps * (cfg.lower_steps + 1)
    assert max(abs(a - b) for a, b in zip(result.w, w.tolist())) > 1e-3  # the mask really moved
    assert any(not torch.equal(a, ft[n]) for a, n in zip(reference["ft"], state.names))  # and so did θ_ft
    for got, name in zip(state.implied_pretrained(), state.names):  # θ_pre itself never changes
        torch.testing.assert_close(got, pre[name], rtol=1e-5, atol=1e-6)


def test_mask_gradient_equals_autograd_through_eq4():
    """Eq. 12 from one backprop equals autograd of L_upper w.r.t. w through θ(m) = θ_ft + σ(w/T)⊙θ_d."""
    model = tiny_model()
    unet = model.unet
    pre = {n: p.detach().clone() for n, p in unet.named_parameters()}
    ft = perturbed(unet, scale=0.05)
    n_tensors, temperature = len(pre), 0.2
    w = torch.linspace(-1.0, 0.6, n_tensors)  # m from ≈0.007 to ≈0.95: every regime of m(1 − m)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, *model.latent_shape, generator=gen)
    t = torch.randint(0, 1000, (4,), generator=gen)
    hidden = model.encode_prompts(["a photo of class_0"] * 2 + ["a photo of class_2"] * 2).detach()
    target = torch.randn(x.shape, generator=gen)
    lam1, lam2, p, gamma = 0.4, 0.6, 0.3, 7.0

    def upper_loss(predict):
        out = predict(x, t, hidden)
        illegal, legal = F.mse_loss(out[:2], target[:2]), F.mse_loss(out[2:], target[2:])
        return -lam1 * illegal + lam2 * legal

    # Autograd through Eq. 4: a per-tensor graph from w to every weight.
    w_auto = w.clone().requires_grad_(True)
    m = torch.sigmoid(w_auto / temperature)
    names = [n for n, _ in unet.named_parameters()]
    weights = {n: ft[n] + m[i] * (pre[n] - ft[n]) for i, n in enumerate(names)}
    loss = upper_loss(lambda *a: torch.func.functional_call(unet, weights, a).sample)
    loss = loss + gamma * (m.mean() - p) ** 2
    expected, = torch.autograd.grad(loss, w_auto)

    # FreezeAsGuard: one backprop to θ(m), then a traversal over tensors.
    state = BilevelState(unet, pre, ft, w, temperature)
    grads = torch.autograd.grad(upper_loss(lambda *a: unet(*a).sample), state.params)
    got = state.mask_gradient(list(grads)) + state.sparsity_gradient(p, gamma)
    assert expected.abs().max() > 1e-6
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=1e-8)


def test_initial_mask_is_near_zero_and_seeded():
    w = fg_bilevel.initial_w(100, -0.4, seed=3)
    m = torch.sigmoid(w / 0.2)
    assert (w < 0).all() and (m < 0.15).all() and w.std() > 0
    assert torch.equal(w, fg_bilevel.initial_w(100, -0.4, seed=3))


# -------------------------------------------------------------------------------------- the defense
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_exactly_round_p_n_tensors_frozen_and_artifacts(data, tmp_path, p):
    model = tiny_model()
    fingerprint = model.fingerprint()
    protected = defense(p=p).protect(model, publisher_of(data), ctx_for(tmp_path))
    names = [n for n, _ in model.unet.named_parameters()]
    mask = protected.constraint("freeze_mask")
    assert set(mask.frozen) == set(names)
    assert len(mask.frozen_names()) == round(p * len(names)) == protected.info["frozen_tensors"]
    assert protected.model.fingerprint() == fingerprint  # the pretrained weights, untouched
    saved = json.loads((tmp_path / "run" / "freeze_mask.json").read_text())
    assert {n: t["frozen"] for n, t in saved["tensors"].items()} == mask.frozen
    frozen_w = [saved["tensors"][n]["w"] for n in mask.frozen_names()]  # the top-w tensors are the frozen ones
    free_w = [t["w"] for n, t in saved["tensors"].items() if not t["frozen"]]
    assert min(frozen_w) >= max(free_w)
    curves = (tmp_path / "run" / "mask_curves.csv").read_text().splitlines()
    assert curves[0].split(",")[:4] == ["mask_step", "lower_loss", "illegal_loss", "legal_loss"]
    assert len(curves) == 1 + FAST["mask_steps"]
    for png in ("mask_curves.png", "frozen_by_block.png"):
        assert (tmp_path / "run" / png).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "run" / "frozen_by_block.csv").read_text()
    assert "down_blocks.0" in table and "mid_block" in table
    # defense_info's per-block frozen fractions, recomputed here from the mask by tensor name
    by_block = protected.info["frozen_by_block"]
    blocks = {}
    for name in names:
        parts = name.split(".")  # down_blocks.1.resnets.0.conv1.weight -> down_blocks.1; mid_block...; conv_in...
        block = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
        blocks.setdefault(block, []).append(mask.frozen[name])
    assert list(by_block) == list(blocks)  # UNet order
    assert by_block == {b: pytest.approx(sum(f) / len(f), abs=1e-6) for b, f in blocks.items()}
    assert 0 < max(by_block.values()) and json.loads(json.dumps(protected.info)) == protected.info


def test_parameter_unit_freezes_a_share_of_parameters(data, tmp_path):
    model = tiny_model()
    protected = defense(p=0.3, unit="parameters").protect(model, publisher_of(data), ctx_for(tmp_path))
    sizes = {n: t.numel() for n, t in model.unet.named_parameters()}
    frozen = protected.constraint("freeze_mask").frozen_names()
    share = sum(sizes[n] for n in frozen) / sum(sizes.values())
    assert share >= 0.3 - 1e-9 and share == pytest.approx(protected.info["frozen_parameter_share"])
    w = {n: t["w"] for n, t in json.loads((tmp_path / "run" / "freeze_mask.json").read_text())["tensors"].items()}
    last = max(frozen, key=lambda n: (-w[n], n))  # the last tensor taken in score order
    assert share - sizes[last] / sum(sizes.values()) < 0.3  # without it, p would not be reached


def test_theta_ft_is_an_engine_finetune_cached_as_its_own_stage(data, tmp_path, monkeypatch):
    calls = []
    real = engine.finetune

    def spy(model, examples, cfg, ctx, **kw):
        calls.append((len(examples), cfg.steps, cfg.optimizer))
        return real(model, examples, cfg, ctx, **kw)

    monkeypatch.setattr(engine, "finetune", spy)
    pub = publisher_of(data)
    first = defense(p=0.1).protect(tiny_model(), pub, ctx_for(tmp_path, "a"))
    second = defense(p=0.5).protect(tiny_model(), pub, ctx_for(tmp_path, "b"))  # another p shares θ_ft
    n_pub = sum(len(v) for v in pub.illegal.values()) + sum(len(v) for v in pub.legal.values())
    assert calls == [(n_pub, FAST["init_ft_steps"], "adam")]
    assert not first.info["theta_ft_cached"] and second.info["theta_ft_cached"]
    assert list((tmp_path / "cache" / "freezeasguard-theta-ft").iterdir())
    defense(p=0.1, init_ft_steps=3).protect(tiny_model(), pub, ctx_for(tmp_path, "c"))  # new input, new entry
    assert len(calls) == 2


def test_the_defense_never_sees_the_attackers_share(tmp_path):
    """Replacing every attacker image changes nothing; replacing a publisher image changes the mask."""
    base = tiny_dataset(n_classes=4, n_per_class=10, seed=0)
    other = tiny_dataset(n_classes=4, n_per_class=10, seed=7)
    first = split(base, ILLEGAL + LEGAL, seed=0)
    attacker_ids = {c: {id(e) for e in first.attacker[c]} for c in ILLEGAL + LEGAL}
    swapped = InMemoryDataset({c: [other.examples(c)[i] if id(e) in attacker_ids[c] else e
                                   for i, e in enumerate(base.examples(c))] for c in ILLEGAL + LEGAL})
    second = split(swapped, ILLEGAL + LEGAL, seed=0)
    for c in ILLEGAL + LEGAL:
        assert [id(e) for e in second.publisher[c]] == [id(e) for e in first.publisher[c]]
        assert not any(np.array_equal(a.pixels(), b.pixels()) for a, b in zip(first.attacker[c], second.attacker[c]))
    d = defense(p=0.3, mask_steps=3)
    runs = [d.protect(tiny_model(), publisher_of(s), ctx_for(tmp_path, f"r{i}", cache=False)).constraint("freeze_mask")
            for i, s in enumerate((first, second))]
    scores = [json.loads((tmp_path / f"r{i}" / "freeze_mask.json").read_text())["tensors"] for i in range(2)]
    assert runs[0].frozen == runs[1].frozen and scores[0] == scores[1]
    # The invariance is not vacuous: a different publisher share gives different mask logits.
    changed = publisher_of(first)
    changed.illegal["class_0"] = changed.illegal["class_0"][1:] + [other.examples("class_0")[0]]
    d.protect(tiny_model(), changed, ctx_for(tmp_path, "r2", cache=False))
    third = json.loads((tmp_path / "r2" / "freeze_mask.json").read_text())["tensors"]
    assert any(third[n]["w"] != scores[0][n]["w"] for n in third)


def test_compliant_finetune_keeps_frozen_tensors_bit_identical(data, tmp_path, monkeypatch):
    from advbench_plugins.attacks.fullft import FullFineTune

    model = tiny_model()
    protected = defense(p=0.3).protect(model, publisher_of(data), ctx_for(tmp_path))
    frozen = set(protected.constraint("freeze_mask").frozen_names())
    before = {n: p.detach().clone() for n, p in protected.model.unet.named_parameters()}
    optimized = []
    build = engine.build_optimizer
    monkeypatch.setattr(engine, "build_optimizer", lambda params, cfg: optimized.append(params) or build(params, cfg))
    attack = FullFineTune(build_params(FullFineTune.Params, {"steps": 3, "batch_size": 2}, "attack"))
    attack_data = AttackData("class_0", data.attacker["class_0"], "illegal")
    adapted = attack.adapt(protected, attack_data, Context(seed=0, progress=False, threat_model="compliant"))
    ids = {id(p): n for n, p in adapted.unet.named_parameters()}
    in_optimizer = {ids[id(p)] for p in optimized[0] if id(p) in ids}
    assert in_optimizer == set(before) - frozen  # frozen tensors are not in the optimizer at all
    after = dict(adapted.unet.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in frozen)  # bit-identical
    assert any(not torch.equal(after[n], before[n]) for n in set(before) - frozen)  # the rest did train
    free = attack.adapt(protected, attack_data, Context(seed=0, progress=False, threat_model="unconstrained"))
    assert any(not torch.equal(dict(free.unet.named_parameters())[n], before[n]) for n in frozen)


# ------------------------------------------------------------------------------------- params, errors
@pytest.mark.parametrize("bad", [{"p": 0.0}, {"p": 1.0}, {"unit": "bits"}, {"mask_steps": 0}, {"batch_size": 1},
                                 {"temperature": 0.0}, {"init_w": 0.1}, {"lambda_illegal": "sometimes"},
                                 {"lambda_legal": -1.0}])
def test_bad_params_are_user_errors(bad):
    with pytest.raises(ParamError):
        build_params(FreezeAsGuard.Params, bad, "defense 'freezeasguard'")


def test_lambdas_auto_from_data_amounts_or_given():
    auto = FreezeAsGuard(build_params(FreezeAsGuard.Params, {}, "fg"))
    assert auto.lambdas(10, 30) == (0.25, 0.75)
    given = FreezeAsGuard(build_params(FreezeAsGuard.Params, {"lambda_illegal": "2", "lambda_legal": 0.5}, "fg"))
    assert given.lambdas(10, 30) == (2.0, 0.5)


def test_no_illegal_data_is_a_data_error(tmp_path):
    legal = [Example(text="a photo of class_2", cls="class_2", image=np.zeros((32, 32, 3), np.uint8))]
    with pytest.raises(DataError, match="illegal"):
        defense().protect(tiny_model(), PublisherData(illegal={}, legal={"class_2": legal}), ctx_for(tmp_path))


def test_one_pass_role_losses_match_the_engines_loss():
    """The per-image loss makes the engine's draws in the engine's order: its mean is the engine's loss."""
    model = tiny_model()
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    captions = ["a photo of class_0", "a photo of class_1", "a photo of class_2", "a photo of class_3"]
    with torch.no_grad():
        ours = fg_bilevel.per_example_loss(model, pixels, captions, torch.Generator().manual_seed(5))
        theirs = engine.diffusion_loss(model, pixels, captions, torch.Generator().manual_seed(5))
        roles = fg_bilevel.role_losses(model, {"illegal": (pixels[:1], captions[:1]),
                                               "legal": (pixels[1:], captions[1:])}, torch.Generator().manual_seed(5))
    assert ours.shape == (4,)
    torch.testing.assert_close(ours.mean(), theirs)
    torch.testing.assert_close(roles["illegal"], ours[0])
    torch.testing.assert_close(roles["legal"], ours[1:].mean())


def test_a_runner_cell_with_freezeasguard(temp_plugin, tmp_path):
    """protect → adapt → generate → score through the runner; the record carries the mask facts."""
    from advbench.cells import Cell, PluginSpec
    from advbench.hookspecs import hookimpl
    from advbench.runner import RunOptions, run_cell
    from tests.toyworld import ToyPlugin, fast_attack_args

    class Registration:
        @hookimpl
        def register_defenses(self, register):
            register("fg-under-test", "advbench_plugins.defenses.freezeasguard:FreezeAsGuard", "FreezeAsGuard")

    temp_plugin(ToyPlugin(), "toy-plugin")
    temp_plugin(Registration(), "fg-registration")
    cell = Cell(PluginSpec("defense", "fg-under-test", {**FAST, "p": "0.3"}),
                PluginSpec("attack", "fullft", fast_attack_args()), PluginSpec("domain", "toy"), "compliant", 0)
    record = run_cell(cell, None, RunOptions(cache_dir=tmp_path / "cache", progress=False))
    info = record["defense_info"]
    assert info["frozen_tensors"] == round(0.3 * info["total_tensors"])
    assert info["publisher_images"]["illegal"] > 0 and "freeze_mask.json" in info["artifacts"]
    assert "mid_block" in info["frozen_by_block"] and all(0 <= v <= 1 for v in info["frozen_by_block"].values())
    protect = next(s for s in record["stages"] if s["stage"] == "protect")
    folder = tmp_path / "cache" / "protect" / protect["key"]
    assert (folder / "artifacts" / "frozen_by_block.png").exists()
    assert json.loads((folder / "constraints.json").read_text())[0]["kind"] == "freeze_mask"
