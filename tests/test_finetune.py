"""The fine-tuning engine: frozen tensors, seeding, precision, explicit trainables, custom loss and batches."""

import math

import pytest
import torch

import advbench.finetune as ft
from advbench.errors import ConstraintError, DataError, ParamError
from advbench.finetune import FinetuneConfig, diffusion_loss, finetune, trainable_parameters
from advbench.interfaces import Context
from advbench.testing import tiny_dataset, tiny_model

CTX = Context(seed=0, progress=False)


@pytest.fixture(scope="module")
def examples():
    return tiny_dataset(n_classes=2, n_per_class=4).examples("class_1")


def cfg(**kw):
    return FinetuneConfig(**{"steps": 3, "batch_size": 2, "lr": 1e-3, **kw})


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("bad", [{"steps": 0}, {"lr": 0.0}, {"optimizer": "lion"}, {"mixed_precision": "fp8"},
                                 {"prompt_dropout": 1.0}, {"lr_scheduler": "nope"}, {"max_grad_norm": -1.0}])
def test_config_validation(bad):
    with pytest.raises(ParamError):
        FinetuneConfig(**bad)


def test_frozen_tensors_stay_out_of_the_optimizer_and_unchanged(examples, monkeypatch):
    model = tiny_model()
    names = [n for n, _ in model.unet.named_parameters()]
    frozen = set(names[::3])
    captured = {}
    real = ft.build_optimizer

    def spy(params, config):
        captured["opt"] = real(params, config)
        return captured["opt"]

    monkeypatch.setattr(ft, "build_optimizer", spy)
    before = snapshot(model.unet)
    te_before = snapshot(model.text_encoder)
    result = finetune(model, examples, cfg(optimizer="adam"), CTX, frozen=frozen)

    by_id = {id(p): n for n, p in model.unet.named_parameters()}
    in_optimizer = {by_id[id(p)] for g in captured["opt"].param_groups for p in g["params"]}
    assert in_optimizer == set(names) - frozen
    assert {by_id[id(p)] for p in captured["opt"].state} <= set(names) - frozen
    after = snapshot(model.unet)
    assert all(torch.equal(before[n], after[n]) for n in frozen)  # bit-identical
    assert sum(not torch.equal(before[n], after[n]) for n in set(names) - frozen) > len(names) // 2
    assert all(torch.equal(te_before[n], p) for n, p in model.text_encoder.named_parameters())
    trainable = sum(p.numel() for n, p in model.unet.named_parameters() if n not in frozen)
    assert result.trainable_params == trainable and result.trainable_tensors == len(names) - len(frozen)
    # Adam keeps two moments per trainable element (+ one step counter per tensor), nothing for frozen ones
    assert result.optimizer_state_numel == 2 * trainable + len(names) - len(frozen)
    assert all(p.requires_grad and p.grad is None for p in model.unet.parameters())  # flags restored


def test_same_seed_same_weights_other_seed_other_weights(examples):
    runs = []
    for seed in (0, 0, 1):
        model = tiny_model()
        finetune(model, examples, cfg(prompt_dropout=0.3), Context(seed=seed, progress=False))
        runs.append(model.fingerprint())
    assert runs[0] == runs[1] != runs[2]


def test_bf16_on_cpu_trains_and_returns_float32(examples):
    model = tiny_model()
    before = model.fingerprint()
    autocast = []

    def loss_fn(m, batch, step):
        autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return diffusion_loss(m, batch["pixel_values"], batch["captions"], batch["generator"])

    result = finetune(model, examples, cfg(mixed_precision="bf16"), CTX, loss_fn=loss_fn)
    assert autocast == [(True, torch.bfloat16)] * 3
    assert all(math.isfinite(x) for x in result.losses) and len(result.losses) == 3
    assert model.dtype == torch.float32 and model.text_encoder.dtype == torch.float32
    assert model.fingerprint() != before and result.device == "cpu"


def test_loss_decreases_when_overfitting(examples):
    model = tiny_model()
    result = finetune(model, examples[:2], cfg(steps=30, lr=3e-3, batch_size=2), CTX)
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5
    assert result.seconds > 0 and result.seconds_per_step == pytest.approx(result.seconds / 30)
    assert result.peak_memory_mb >= 0


def test_explicit_trainable_list_minus_frozen(examples):
    model = tiny_model()
    named = dict(model.unet.named_parameters())
    chosen = ["conv_out.weight", "conv_out.bias", "conv_in.weight"]
    before = snapshot(model.unet)
    result = finetune(model, examples, cfg(), CTX, frozen={"conv_in.weight"},
                      trainable=[named[n] for n in chosen])
    changed = {n for n, p in model.unet.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"conv_out.weight", "conv_out.bias"} and result.trainable_tensors == 2


def test_text_encoder_training_is_opt_in(examples):
    model = tiny_model()
    before = snapshot(model.text_encoder)
    finetune(model, examples, cfg(train_text_encoder=True), CTX)
    assert any(not torch.equal(before[n], p) for n, p in model.text_encoder.named_parameters())
    assert set(trainable_parameters(model, (), True)) >= {f"text_encoder.{n}" for n in before}


def test_custom_loss_batches_and_early_stop(examples):
    model = tiny_model()
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    seen = []

    def batches(step, generator):
        idx = torch.randint(0, 3, (2,), generator=generator)
        return {"pixel_values": pixels[idx], "captions": ["a photo of class_9"] * 2, "extra": step}

    def loss_fn(m, batch, step):
        seen.append((step, batch["extra"], batch["captions"][0]))
        return 2.0 * diffusion_loss(m, batch["pixel_values"], batch["captions"], batch["generator"])

    result = finetune(model, batches, cfg(steps=10), CTX, loss_fn=loss_fn, callback=lambda step, loss: step == 3)
    assert len(result.losses) == 4 and [s[0] for s in seen] == [0, 1, 2, 3]
    assert all(s[0] == s[1] and s[2] == "a photo of class_9" for s in seen)


def test_prompt_dropout_blanks_some_captions(examples):
    captions = []

    def loss_fn(m, batch, step):
        captions.extend(batch["captions"])
        return diffusion_loss(m, batch["pixel_values"], batch["captions"], batch["generator"])

    finetune(tiny_model(), examples, cfg(steps=10, batch_size=4, prompt_dropout=0.5), CTX, loss_fn=loss_fn)
    blanks = captions.count("")
    assert 5 <= blanks <= 35 and set(captions) == {"", "a photo of class_1"}
    captions.clear()
    finetune(tiny_model(), examples, cfg(steps=3), CTX, loss_fn=loss_fn)
    assert "" not in captions


def test_gradient_checkpointing_gives_the_same_first_loss(examples):
    plain, ckpt = tiny_model(), tiny_model()
    a = finetune(plain, examples, cfg(steps=2), CTX)
    b = finetune(ckpt, examples, cfg(steps=2, gradient_checkpointing=True), CTX)
    assert b.losses[0] == pytest.approx(a.losses[0], rel=1e-5)
    assert not ckpt.unet.is_gradient_checkpointing  # switched off again


def test_bad_selections_are_user_errors(examples):
    model = tiny_model()
    with pytest.raises(ConstraintError, match="different model"):
        finetune(model, examples, cfg(), CTX, frozen={"not.a.tensor"})
    all_names = {n for n, _ in model.unet.named_parameters()}
    with pytest.raises(ConstraintError, match="nothing to train"):
        finetune(model, examples, cfg(), CTX, frozen=all_names)
    with pytest.raises(DataError, match="no training images"):
        finetune(model, [], cfg(), CTX)
    assert all(p.requires_grad for p in model.unet.parameters())


def test_batches_span_epochs_and_cover_every_example(examples):
    batches = ft.SeededBatcher(examples[:3], batch_size=2, resolution=32)
    g = torch.Generator().manual_seed(0)
    seen = [c for step in range(3) for c in batches(step, g)["captions"]]
    assert len(seen) == 6 and batches.pixels.shape == (3, 3, 32, 32)


def test_a_loop_over_the_trainer_is_finetune_bit_for_bit(examples):
    """The trainer object is the engine: stepping it by hand gives finetune()'s weights exactly."""
    from advbench.finetune import SeededBatcher, Trainer

    config = cfg(steps=4, prompt_dropout=0.3, random_flip=True)
    engine, manual = tiny_model(), tiny_model()
    frozen = [n for n, _ in engine.unet.named_parameters()][::4]
    run = finetune(engine, examples, config, CTX, frozen=frozen)
    batches = SeededBatcher(examples, config.batch_size, manual.resolution)
    with Trainer(manual, config, CTX, frozen=frozen) as trainer:
        losses = [trainer.step(ft._augment(batches(step, trainer.generator), config, trainer.generator))
                  for step in range(config.steps)]
    assert losses == run.losses
    for (name, a), b in zip(engine.unet.named_parameters(), manual.unet.parameters()):
        assert torch.equal(a, b), name


def test_trainer_without_optimizer_sets_up_and_restores(examples):
    """optimize=False (FreezeAsGuard's bilevel loop): the set-up only, and every flag restored on exit."""
    from advbench.finetune import Trainer

    model = tiny_model()
    model.text_encoder.requires_grad_(True)
    before = {n: p.requires_grad for n, p in model.unet.named_parameters()}
    with Trainer(model, cfg(), CTX, optimize=False) as trainer:
        assert trainer.optimizer is None and trainer.optimizer_state_numel() == 0
        assert all(p.requires_grad for p in model.unet.parameters())
        assert not any(p.requires_grad for p in model.text_encoder.parameters())
        assert model.unet.training and not model.text_encoder.training
        loss = trainer.loss({"pixel_values": torch.zeros(2, 3, model.resolution, model.resolution),
                             "captions": ["a", "b"]})
        assert loss.requires_grad
    assert {n: p.requires_grad for n, p in model.unet.named_parameters()} == before
    assert all(p.requires_grad for p in model.text_encoder.parameters())
    assert not model.unet.training
