"""`dreambooth` and `dreambooth-lora`: the prior term, cached class images, identifier rewrites, freeze masks."""

import pytest
import torch

import advbench.adapters as adapters
import advbench.sampling as sampling
from advbench.errors import ParamError
from advbench.finetune import SeededBatcher, diffusion_loss
from advbench.hookspecs import hookimpl
from advbench.interfaces import AttackData, Context, FreezeMask, ProtectedModel
from advbench.model import Model
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.attacks.dreambooth import (CACHE_SUBDIR, DreamBooth, DreamBoothLoRA, class_prompts,
                                                 dreambooth_loss)

FAST = {"steps": 2, "batch_size": 2, "num_class_images": 3, "class_sampling_steps": 2}


@pytest.fixture(scope="module")
def data():
    return AttackData("class_1", tiny_dataset(n_classes=2, n_per_class=4).examples("class_1"), "illegal")


def attack(cls=DreamBooth, **kw):
    a = cls(cls.Params(**{**FAST, **kw}))
    a.name = "dreambooth-lora" if cls is DreamBoothLoRA else "dreambooth"
    return a


def ctx(tmp_path, threat="compliant", seed=0):
    return Context(seed=seed, progress=False, threat_model=threat, work_dir=tmp_path)


@pytest.fixture
def generate_calls(monkeypatch):
    calls = []
    real = sampling.generate

    def counting(model, prompts, cfg, ctx):
        calls.append(list(prompts))
        return real(model, prompts, cfg, ctx)

    monkeypatch.setattr(sampling, "generate", counting)
    return calls


def grads(model, batch, weight, seed=0):
    model.unet.zero_grad()
    loss = dreambooth_loss(model, {**batch, "generator": torch.Generator().manual_seed(seed)}, weight)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.unet.parameters()])


def test_prior_term_is_in_the_loss_and_changes_the_gradient():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    batch = {"pixel_values": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "captions": ["a photo of sks"] * 2,
             "class_pixel_values": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "class_captions": ["a photo"] * 2}
    loss0, grad0 = grads(model, batch, 0.0)
    loss1, grad1 = grads(model, batch, 1.0)
    loss2, grad2 = grads(model, batch, 2.0)
    assert not torch.allclose(grad0, grad1)
    torch.testing.assert_close(grad2 - grad1, grad1 - grad0, atol=1e-6, rtol=1e-4)  # linear in the weight
    gen = torch.Generator().manual_seed(0)  # the same draws, in the same order: instance first, then prior
    instance = diffusion_loss(model, batch["pixel_values"], batch["captions"], gen)
    prior = diffusion_loss(model, batch["class_pixel_values"], batch["class_captions"], gen)
    torch.testing.assert_close(loss1, (instance + prior).detach())
    _, plain = grads(model, {k: batch[k] for k in ("pixel_values", "captions")}, 1.0)
    torch.testing.assert_close(grad0, plain)  # weight 0 is plain fine-tuning on the instance images


def test_class_prompts_replace_the_name_by_the_class_noun(data):
    assert class_prompts(data.examples, "class_1", "pattern", 3) == ["a photo of pattern"] * 3
    assert class_prompts(data.examples, "class_1", "", 2) == ["a photo of"] * 2


def test_class_images_are_generated_once_and_reused(tmp_path, data, generate_calls):
    protected = ProtectedModel(tiny_model())
    first = attack(class_noun="pattern").adapt(protected, data, ctx(tmp_path / "a"))
    assert generate_calls == [["a photo of pattern"] * 3]
    entries = list((tmp_path / "cache" / CACHE_SUBDIR).iterdir())  # conftest points ADVBENCH_CACHE here
    assert len(entries) == 1 and (entries[0] / "images.npy").exists()
    second = attack(class_noun="pattern").adapt(protected, data, ctx(tmp_path / "b"))
    assert len(generate_calls) == 1  # reused, not regenerated
    assert first.fingerprint() == second.fingerprint()  # and the run is reproducible
    attack(class_noun="pattern").adapt(protected, data, ctx(tmp_path / "c", seed=1))
    assert len(generate_calls) == 2  # another seed: other class images


def test_no_prior_preservation_generates_nothing(tmp_path, data, generate_calls):
    attack(prior_preservation=False).adapt(ProtectedModel(tiny_model()), data, ctx(tmp_path))
    assert generate_calls == []


def test_identifier_rewrites_captions_and_evaluation_prompts(tmp_path, data, monkeypatch):
    captions = []
    real = SeededBatcher.draw

    def spy(self, generator):
        pixels, caps = real(self, generator)
        captions.extend(caps)
        return pixels, caps

    monkeypatch.setattr(SeededBatcher, "draw", spy)
    adapted = attack(class_noun="pattern").adapt(ProtectedModel(tiny_model()), data, ctx(tmp_path))
    assert adapted.prompt_rewrites == {"class_1": "sks pattern"}
    assert adapted.rewrite_prompt("a photo of class_1") == "a photo of sks pattern"
    assert set(captions) == {"a photo of sks pattern", "a photo of pattern"}  # instance and class captions


def frozen_mask(model):
    names = [n for n, _ in model.unet.named_parameters()]
    frozen = {n for n in names if ("to_q" in n or "to_v" in n) and n.endswith("weight")} | set(names[::4])
    return frozen, FreezeMask({n: n in frozen for n in names})


@pytest.mark.parametrize("cls", [DreamBooth, DreamBoothLoRA])
def test_freeze_mask_compliant_and_unconstrained(tmp_path, data, cls):
    base = tiny_model()
    before = {n: t.clone() for n, t in base.unet.state_dict().items()}
    frozen, mask = frozen_mask(base)
    protected = ProtectedModel(base, [mask])
    compliant = attack(cls, steps=3).adapt(protected, data, ctx(tmp_path / "c"))
    after = compliant.unet.state_dict()
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert any(not torch.equal(after[n], before[n]) for n in set(before) - frozen)
    unconstrained = attack(cls, steps=3).adapt(protected, data, ctx(tmp_path / "u", "unconstrained"))
    assert any(not torch.equal(unconstrained.unet.state_dict()[n], before[n]) for n in frozen)


def test_dreambooth_lora_with_text_encoder_saves_a_plain_model(tmp_path, data):
    base = tiny_model()
    adapted = attack(DreamBoothLoRA, steps=3, train_text_encoder=True).adapt(ProtectedModel(base), data,
                                                                              ctx(tmp_path))
    text_before, text_after = base.text_encoder.state_dict(), adapted.text_encoder.state_dict()
    assert set(text_after) == set(text_before)
    changed = {n for n in text_before if not torch.equal(text_after[n], text_before[n])}
    assert changed and all(any(t in n for t in ("q_proj", "k_proj", "v_proj", "out_proj")) for n in changed)
    from safetensors import safe_open
    with safe_open(str(tmp_path / adapters.LORA_FILE), "pt") as fh:
        keys = list(fh.keys())
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    adapted.save(tmp_path / "model")
    assert Model.load(tmp_path / "model").fingerprint() == adapted.fingerprint()


def test_full_dreambooth_can_train_the_text_encoder(tmp_path, data):
    base = tiny_model()
    adapted = attack(train_text_encoder=True, prior_preservation=False).adapt(ProtectedModel(base), data,
                                                                              ctx(tmp_path))
    before = base.text_encoder.state_dict()
    assert any(not torch.equal(t, before[n]) for n, t in adapted.text_encoder.state_dict().items())


@pytest.mark.parametrize("bad", [{"identifier": "two words"}, {"identifier": ""}, {"prior_loss_weight": "-1"},
                                 {"num_class_images": "0"}, {"steps": "0"}, {"rank": "0"}])
def test_params_are_validated(bad):
    with pytest.raises(ParamError):
        build_params(DreamBoothLoRA.Params, bad, "attack 'dreambooth-lora'")
    if "rank" not in bad:
        with pytest.raises(ParamError):
            build_params(DreamBooth.Params, bad, "attack 'dreambooth'")


class _AttackPlugin:
    """The four attacks under test-only names (the built-in names are the lead's registrations)."""

    @hookimpl
    def register_attacks(self, register):
        register("t-lora", "advbench_plugins.attacks.lora:Lora")
        register("t-dreambooth", "advbench_plugins.attacks.dreambooth:DreamBooth")
        register("t-dreambooth-lora", "advbench_plugins.attacks.dreambooth:DreamBoothLoRA")
        register("t-textual-inversion", "advbench_plugins.attacks.textual_inversion:TextualInversion")


@pytest.mark.parametrize("name", ["t-lora", "t-dreambooth", "t-dreambooth-lora", "t-textual-inversion"])
def test_attack_runs_in_a_benchmark_cell(temp_plugin, tmp_path, name):
    from advbench.cells import Cell, PluginSpec
    from advbench.runner import RunOptions, run_cell

    from tests.toyworld import ToyPlugin

    temp_plugin(ToyPlugin(), "toy-plugin")
    temp_plugin(_AttackPlugin(), "attack-plugin")
    params = {"steps": 2, "batch_size": 2}
    if "dreambooth" in name:
        params.update({"num_class_images": 2, "class_sampling_steps": 2})
    cell = Cell(PluginSpec("defense", "random", {"p": "0.3"}), PluginSpec("attack", name, params),
                PluginSpec("domain", "toy"), "compliant", 0)
    record = run_cell(cell, None, RunOptions(cache_dir=tmp_path / "cache", progress=False))
    stages = [s for s in record["stages"] if s["stage"] == "adapt"]
    # default budgets 1 and 2: a snapshot after step 1 and the final model, for each of the 4 classes
    assert len(stages) == 8 and not any(s["cached"] for s in stages)
    adapted = [s for s in stages if s["budget"] == 2]
    folder = tmp_path / "cache" / "adapt" / adapted[0]["key"]
    model = Model.load(folder / "model")
    snapshot = Model.load(tmp_path / "cache" / "adapt" / stages[0]["key"] / "model")
    assert stages[0]["budget"] == 1 and stages[0]["class"] == adapted[0]["class"]
    if "lora" in name:
        assert (folder / "artifacts" / adapters.LORA_FILE).exists()
        assert not any("lora" in k for k in snapshot.unet.state_dict())  # snapshots are merged too
    if name in ("t-dreambooth", "t-dreambooth-lora", "t-textual-inversion"):
        assert set(model.prompt_rewrites) == {adapted[0]["class"]}
        assert snapshot.prompt_rewrites == model.prompt_rewrites
