"""SOPHON: restarts from θ, first-order outer gradient, query loss up and legal loss bounded, data isolation."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import advbench.finetune as engine
from advbench.data import InMemoryDataset, split
from advbench.errors import DataError, ParamError
from advbench.interfaces import Context, Example, PublisherData
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.defenses import sophon_math
from advbench_plugins.defenses.sophon import LEGAL_BOUND, Sophon

FAST = {"loops": 2, "inner_steps": 2, "batch_size": 2, "query_batch_size": 2, "legal_steps": 1,
        "legal_batch_size": 2}
ILLEGAL, LEGAL = ["class_0", "class_1"], ["class_2", "class_3"]


def defense(**kw):
    return Sophon(build_params(Sophon.Params, {**FAST, **kw}, "defense 'sophon'"))


def publisher_of(data) -> PublisherData:
    return PublisherData(illegal={c: data.publisher[c] for c in ILLEGAL}, legal={c: data.publisher[c] for c in LEGAL})


def ctx(seed=0):
    return Context(seed=seed, progress=False)


@pytest.fixture(scope="module")
def data():
    return split(tiny_dataset(n_classes=4, n_per_class=10), ILLEGAL + LEGAL, seed=0)


@pytest.fixture(scope="module")
def pretrained(data):
    """A tiny model trained a little on all four classes, so its diffusion loss is well below E‖ε‖² = 1
    (an untrained one predicts ≈ noise-free junk: driving its output to zero would *lower* its loss)."""
    model = tiny_model()
    images = [e for c in ILLEGAL + LEGAL for e in data.publisher[c]]
    engine.finetune(model, images, engine.FinetuneConfig(steps=30, batch_size=8, lr=3e-3), ctx())
    return model


def snapshot(params):
    return [p.detach().clone() for p in params]


def equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------ the loop
def test_every_simulated_finetune_restarts_from_theta_and_leaves_theta_alone(data, monkeypatch):
    """φ₀ = θ at each loop's start (a separate copy), inner steps move φ only, θ moves between loops."""
    starts, checks = [], []
    restart, simulate = sophon_math.restart, sophon_math.simulate
    state = {}

    def recording_restart(learner, theta):
        learner, theta = list(learner), list(theta)
        before = snapshot(learner)
        restart(learner, theta)
        assert not starts or not equal(before, theta)  # after the first fine-tune φ had moved away from θ
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(learner, theta))  # a clone, not θ itself
        assert equal(learner, theta)
        state["theta"], state["at_start"] = theta, snapshot(theta)
        starts.append(snapshot(theta))

    def recording_simulate(learner, params, *args, **kw):
        def on_step(k, model):
            assert equal(state["theta"], state["at_start"])  # θ is not touched by inner steps
            assert not equal(params, state["at_start"])  # but the clone did train
            assert all(p.grad_fn is None and p.grad is None for p in params)  # no graph back to θ
            checks.append(k)

        return simulate(learner, params, *args, on_step=on_step, **kw)

    monkeypatch.setattr(sophon_math, "restart", recording_restart)
    monkeypatch.setattr(sophon_math, "simulate", recording_simulate)
    d = defense(loops=3, suppression_steps=2, inner_steps=3)
    protected = d.protect(tiny_model(), publisher_of(data), ctx())
    assert len(starts) == 3 * 2 and checks == [0, 1, 2] * 6
    assert all(not equal(a, b) for a, b in zip(starts, starts[1:]))  # every outer step moved θ
    assert not equal(starts[-1], list(protected.model.unet.parameters()))  # and so did the last one + legal


@pytest.mark.parametrize("kind", ["dos", "inverse_mse"])
def test_the_outer_gradient_is_the_mean_of_query_gradients_at_the_inner_iterates(data, monkeypatch, kind):
    """First order: g equals (1/K) Σ ∇S(φ_k; query_k), recomputed at each recorded φ_k with its exact batch and
    noise; no autograd call builds a graph of the gradient (create_graph)."""
    queries, results = [], []
    predict, simulate, grad = sophon_math.predict, sophon_math.simulate, torch.autograd.grad

    def recording_predict(model, pixels, captions, generator):
        queries.append((snapshot(model.unet.parameters()), pixels.clone(), list(captions), generator.get_state()))
        return predict(model, pixels, captions, generator)

    def recording_simulate(*args, **kw):
        sim = simulate(*args, **kw)
        results.append([g.clone() for g in sim.grads])  # before the caller clips them in place
        return sim

    def checked_grad(*args, **kw):
        assert not kw.get("create_graph", False) and len(args) < 5
        return grad(*args, **kw)

    monkeypatch.setattr(sophon_math, "predict", recording_predict)
    monkeypatch.setattr(sophon_math, "simulate", recording_simulate)
    monkeypatch.setattr(torch.autograd, "grad", checked_grad)
    model = tiny_model()
    defense(loops=1, inner_steps=3, legal_steps=0, query_loss=kind).protect(model, publisher_of(data), ctx())
    monkeypatch.undo()
    assert len(queries) == 3 and len(results) == 1
    fresh = tiny_model()
    params = list(fresh.unet.parameters())
    per_step = []
    for weights, pixels, captions, state in queries:
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        prediction, target = predict(fresh, pixels, captions, torch.Generator().set_state(state))
        per_step.append(torch.autograd.grad(sophon_math.suppression(kind, prediction, target), params))
    expected = [sum(gs) / len(gs) for gs in zip(*per_step)]
    for got, want in zip(results[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert not equal(queries[0][0], queries[1][0])  # the iterates differ, so the mean is not one gradient
    at_theta = torch.cat([g.flatten() for g in per_step[0]])
    assert not torch.allclose(torch.cat([g.flatten() for g in expected]), at_theta, rtol=1e-3)


def test_predict_makes_the_engines_draws():
    """mse(prediction, target) of :func:`sophon_math.predict` is the engine's ``diffusion_loss``."""
    model = tiny_model()
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    captions = ["a photo of class_0", "a photo of class_1", ""]
    with torch.no_grad():
        prediction, target = sophon_math.predict(model, pixels, captions, torch.Generator().manual_seed(4))
        theirs = engine.diffusion_loss(model, pixels, captions, torch.Generator().manual_seed(4))
    torch.testing.assert_close(torch.nn.functional.mse_loss(prediction, target), theirs)
    assert sophon_math.suppression("dos", prediction, target) == pytest.approx(float(prediction.pow(2).mean()))
    with pytest.raises(ValueError):
        sophon_math.suppression("kl", prediction, target)


# ------------------------------------------------------------------------------------------ outcomes
@pytest.mark.parametrize("kind,legal_lr", [("dos", 1e-3), ("inverse_mse", 2e-3)])
def test_query_loss_rises_and_legal_loss_stays_within_the_bound(data, pretrained, kind, legal_lr):
    """Over a protect the fine-tuned model's query loss rises (first vs last loop, first vs last third, and the
    un-fine-tuned illegal loss on fixed noise); on the same run the legal loss on fixed noise stays within
    LEGAL_BOUND × its value before. (On this barely trained tiny model the classes hardly differ, so the
    suppression spills over to the legal classes unless the legal rate is high; the world model separates them.)"""
    d = defense(loops=12, inner_steps=2, batch_size=4, query_batch_size=4, legal_steps=2, legal_batch_size=4,
                outer_lr=2e-3, legal_lr=legal_lr, query_loss=kind)
    info = d.protect(pretrained, publisher_of(data), ctx()).info
    assert len(info["query_loss_series"]) == 12 and len(info["legal_loss_series"]) == 12
    assert info["query_loss_last"] > info["query_loss_first"]
    third = len(info["query_loss_series"]) // 3
    assert np.mean(info["query_loss_series"][-third:]) > np.mean(info["query_loss_series"][:third])
    assert info["illegal_eval_after"] > info["illegal_eval_before"]
    if kind == "dos":
        assert info["objective_series"][-1] < info["objective_series"][0]  # the output is driven towards 0
    assert info["legal_bound"] == LEGAL_BOUND == 1.5
    assert info["legal_eval_after"] <= LEGAL_BOUND * info["legal_eval_before"]


def test_only_unet_tensors_change(data):
    model = tiny_model()
    fingerprint = model.fingerprint()
    protected = defense().protect(model, publisher_of(data), ctx())
    assert protected.constraints == [] and protected.model is not model
    old, new = model.unet.state_dict(), protected.model.unet.state_dict()
    assert all(not torch.equal(old[k], new[k]) for k in old)  # every UNet tensor moved
    old, new = model.text_encoder.state_dict(), protected.model.text_encoder.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)  # the text encoder is bit-identical
    assert all(p.requires_grad for p in protected.model.unet.parameters()) == \
        all(p.requires_grad for p in model.unet.parameters())  # flags restored by the trainer
    assert model.fingerprint() == fingerprint  # the input model is untouched


def test_the_defense_never_sees_the_attackers_share():
    """Replacing every attacker image changes nothing; replacing one publisher image changes the weights."""
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
    runs = [defense().protect(tiny_model(), publisher_of(s), ctx()).model.unet.state_dict() for s in (first, second)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    changed = publisher_of(first)
    changed.illegal["class_0"] = changed.illegal["class_0"][1:] + [other.examples("class_0")[0]]
    third = defense().protect(tiny_model(), changed, ctx()).model.unet.state_dict()
    assert any(not torch.equal(runs[0][k], third[k]) for k in third)
    reseeded = defense().protect(tiny_model(), publisher_of(first), ctx(seed=1)).model.unet.state_dict()
    assert any(not torch.equal(runs[0][k], reseeded[k]) for k in reseeded)  # seeds come from ctx.seed


def test_info_records_the_run(data):
    info = defense(loops=3).protect(tiny_model(), publisher_of(data), ctx()).info
    assert info["defense"] == "sophon" and info["query_loss"] == "dos" and info["settings"]["loops"] == 3
    for key in ("query_loss_series", "objective_series", "support_loss_series", "legal_loss_series",
                "outer_grad_norm_series", "seconds_per_loop"):
        assert len(info[key]) == 3, key
    assert info["query_loss_first"] == info["query_loss_series"][0]
    assert info["legal_loss_last"] == info["legal_loss_series"][-1]
    assert info["publisher_images"] == {"illegal": 8, "legal": 8} and info["seconds"] > 0
    assert all(v is not None for v in (info["illegal_eval_before"], info["legal_eval_after"]))


def test_without_legal_classes_the_legal_steps_are_skipped(data):
    pub = PublisherData(illegal={c: data.publisher[c] for c in ILLEGAL}, legal={})
    info = defense().protect(tiny_model(), pub, ctx()).info
    assert info["legal_loss_series"] == [] and info["legal_loss_first"] is None
    assert info["legal_eval_before"] is None and info["legal_eval_after"] is None


# --------------------------------------------------------------------------------------- params, errors
def test_defaults_validate():
    params = build_params(Sophon.Params, {}, "defense 'sophon'")
    assert params.query_loss == "dos" and params.max_grad_norm == 0.5 and params.suppression_steps == 1
    assert build_params(Sophon.Params, {"query_loss": "inverse_mse", "loops": "3"}, "sophon").loops == 3


@pytest.mark.parametrize("bad", [{"query_loss": "mse"}, {"loops": 0}, {"inner_steps": 0}, {"batch_size": 0},
                                 {"query_batch_size": 0}, {"legal_batch_size": 0}, {"suppression_steps": 0},
                                 {"legal_steps": -1}, {"inner_lr": 0}, {"outer_lr": -1e-4}, {"legal_lr": 0.0},
                                 {"max_grad_norm": 0}, {"outer_lr": float("nan")}, {"loops": "many"}])
def test_bad_params_are_user_errors(bad):
    with pytest.raises(ParamError):
        build_params(Sophon.Params, bad, "defense 'sophon'")


def test_no_illegal_data_is_a_data_error():
    legal = [Example(text="a photo of class_2", cls="class_2", image=np.zeros((32, 32, 3), np.uint8))]
    with pytest.raises(DataError, match="illegal"):
        defense().protect(tiny_model(), PublisherData(illegal={}, legal={"class_2": legal}), ctx())


def test_cli_lists_sophon_and_shows_every_parameter(monkeypatch):
    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    monkeypatch.setenv("COLUMNS", "200")
    _attach_commands()
    runner = CliRunner()
    listed = runner.invoke(cli, ["list"], catch_exceptions=False)
    assert listed.exit_code == 0 and "sophon" in listed.output.split()
    shown = runner.invoke(cli, ["show", "defense", "sophon"], catch_exceptions=False)
    assert shown.exit_code == 0
    for f in dataclasses.fields(Sophon.Params):
        assert f.name in shown.output and f.metadata["help"][:30] in shown.output, f.name
    assert plugins.registry("defense").get("sophon") is Sophon
    monkeypatch.setenv("COLUMNS", "80")
    narrow = runner.invoke(cli, ["show", "defense", "sophon"], catch_exceptions=False).output
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
