"""UCE: the closed form against an independent least-squares solve, key rows, what changes, the plugin contract."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advbench.adapters import attention_projections
from advbench.errors import DataError, ParamError
from advbench.interfaces import Context, Example, PublisherData
from advbench.model import Model
from advbench.params import build_params
from advbench_plugins.defenses import uce_math
from advbench_plugins.defenses.uce import UCE
from advbench_plugins.world.build import model_dir

ILLEGAL, LEGAL = ["Varo Kellin", "Mira Dostal"], ["Nadia Frell", "Tobin Arkwright"]


@pytest.fixture(scope="module")
def world():
    return Model.load(model_dir())


def examples(cls, n=3, noise_seed=None):
    """Publisher images: the world's renders of ``cls``, or random noise when ``noise_seed`` is given."""
    if noise_seed is None:
        from advbench_plugins.world.generators import get_generator

        images = list(get_generator("portraits").images(cls, n))
    else:
        rng = np.random.default_rng(noise_seed)
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    return [Example(text=f"a photo of {cls}", cls=cls, image=im) for im in images]


def publisher(noise_seed=None, illegal=ILLEGAL, legal=LEGAL, nouns=True):
    return PublisherData(illegal={c: examples(c, noise_seed=noise_seed) for c in illegal},
                         legal={c: examples(c, noise_seed=noise_seed) for c in legal},
                         nouns={c: "person" for c in illegal + legal} if nouns else {},
                         prompts={c: [f"a photo of {c}", f"a portrait of {c}"] for c in illegal + legal})


def uce(**kw):
    return UCE(build_params(UCE.Params, kw, "defense 'uce'"))


def ctx():
    return Context(seed=0, progress=False)


def kv_weights(model, projections=("to_k", "to_v")):
    return {n: m.weight.detach() for n, m in attention_projections(model.unet, ("attn2",), projections).items()}


# ------------------------------------------------------------------- independent key rows (from token ids)
def n_words(tokenizer, text):
    """Word tokens of ``text`` (no BOS/EOS): the last one sits at this index once BOS is prepended."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def hidden(model, text):
    with torch.no_grad():
        return model.encode_prompts([text])[0].double()


def erase_rows(model, prompt, guide, variant):
    """(C rows, guide rows) of one erase pair, by the official definitions, computed without uce_math."""
    a, b = n_words(model.tokenizer, prompt), n_words(model.tokenizer, guide)
    hp, hg = hidden(model, prompt), hidden(model, guide)
    if variant == "2025":
        return hp[a:a + 1], hg[b:b + 1]
    f, length = max(a, b), hp.shape[0]
    return hp[a:length - (f - a)], hg[b:length - (f - b)]


def preserve_rows(model, prompt, variant):
    h = hidden(model, prompt)
    return h if variant == "2023" else h[n_words(model.tokenizer, prompt)][None]


def lstsq_weight(w0, c_e, v_e, c_p, lamb, s_e, s_p):
    """argmin_W λ‖W − W₀‖² + s_e Σ‖W c_i − v*_i‖² + s_p Σ‖W c_j − W₀ c_j‖², by numpy's least squares."""
    w0 = w0.double().numpy()
    c_e, v_e, c_p = c_e.numpy(), v_e.numpy(), c_p.numpy()
    a = np.concatenate([np.sqrt(lamb) * np.eye(w0.shape[1]), np.sqrt(s_e) * c_e, np.sqrt(s_p) * c_p])
    b = np.concatenate([np.sqrt(lamb) * w0.T, np.sqrt(s_e) * v_e, np.sqrt(s_p) * c_p @ w0.T])
    return np.linalg.lstsq(a, b, rcond=None)[0].T


CASES = [  # params, expected erase prompts (each guided to the bare guide), guide, preserve prompts, s_p
    ({}, ["Mira Dostal", "Varo Kellin"], "person", ["", "Nadia Frell", "Tobin Arkwright"], 1 / 3),
    ({"keys": "2025"}, ["Mira Dostal", "Varo Kellin"], "person", ["", "Nadia Frell", "Tobin Arkwright"], 1 / 3),
    ({"guide": "blank", "preserve": "none", "add_prompts": True, "lamb": 0.2, "erase_scale": 2.0,
      "preserve_scale": 0.7},
     ["Mira Dostal", "a photo of Mira Dostal", "a portrait of Mira Dostal", "Varo Kellin", "a photo of Varo Kellin",
      "a portrait of Varo Kellin"], " ", [""], 0.7),
    ({"keys": "2025", "guide": "blank", "preserve": "none"}, ["Mira Dostal", "Varo Kellin"], " ", [""], 1.0),
]


@pytest.mark.parametrize("kw,erase,guide,preserve,s_p", CASES)
def test_every_edited_layer_equals_an_independent_least_squares_solve(world, kw, erase, guide, preserve, s_p):
    protected = uce(**kw).protect(world, publisher(), ctx())
    info, variant = protected.info, kw.get("keys", "2023")
    assert info["erase_prompts"] == erase and info["guide_prompts"] == [guide] * len(erase)
    assert info["preserve_prompts"] == preserve and info["preserve_scale"] == pytest.approx(s_p)
    lamb, s_e = kw.get("lamb", 0.5), kw.get("erase_scale", 1.0)
    pairs = [erase_rows(world, e, guide, variant) for e in erase]
    c_e, g_e = torch.cat([c for c, _ in pairs]), torch.cat([g for _, g in pairs])
    c_p = torch.cat([preserve_rows(world, p, variant) for p in preserve])
    assert info["erase_keys"] == c_e.shape[0] and info["preserve_keys"] == c_p.shape[0]
    before, after = kv_weights(world), kv_weights(protected.model)
    assert info["edited_layers"] == len(before) == 14
    for name, w0 in before.items():
        v_e = g_e @ w0.double().T
        expected = lstsq_weight(w0, c_e, v_e, c_p, lamb, s_e, s_p)
        got = after[name].double().numpy()
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5, name
        assert not np.allclose(got, w0.numpy())  # the edit is not vacuous


def test_only_cross_attention_keys_and_values_change(world):
    fingerprint = world.fingerprint()
    for edit_keys, projections in ((True, ("to_k", "to_v")), (False, ("to_v",))):
        protected = uce(edit_keys=edit_keys).protect(world, publisher(), ctx())
        assert protected.constraints == []
        edited = {f"{n}.weight" for n in attention_projections(world.unet, ("attn2",), projections)}
        assert len(edited) == 14 // (3 - len(projections)) and protected.info["edited_layers"] == len(edited)
        for part in ("unet", "text_encoder"):
            old = getattr(world, part).state_dict()
            new = getattr(protected.model, part).state_dict()
            assert old.keys() == new.keys()
            for key in old:
                assert torch.equal(old[key], new[key]) == (f"{part}.{key}" not in {f"unet.{e}" for e in edited}), key
    assert world.fingerprint() == fingerprint  # the input model is untouched


def test_images_are_ignored(world):
    real = uce().protect(world, publisher(), ctx()).model
    noise = uce().protect(world, publisher(noise_seed=3), ctx()).model
    assert not np.array_equal(publisher().illegal[ILLEGAL[0]][0].pixels(),
                              publisher(noise_seed=3).illegal[ILLEGAL[0]][0].pixels())
    a, b = real.unet.state_dict(), noise.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The words do matter: another illegal class gives other weights.
    other = uce().protect(world, publisher(illegal=["Teodor Vance", "Mira Dostal"]), ctx()).model
    assert any(not torch.equal(a[k], other.unet.state_dict()[k]) for k in a)


# --------------------------------------------------------------------------------------- the math alone
def random_problem(n_e, n_p, out=16, d_in=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(out, d_in, generator=gen)
    return (w0, torch.randn(n_e, d_in, generator=gen, dtype=torch.float64),
            torch.randn(n_e, out, generator=gen, dtype=torch.float64),
            torch.randn(n_p, d_in, generator=gen, dtype=torch.float64))


def test_closed_form_is_the_papers_equation():
    w0, c_e, v_e, c_p = random_problem(5, 7)
    lamb, s_e, s_p = 0.5, 1.3, 0.4
    w = w0.double()
    mat1 = lamb * w + s_e * v_e.T @ c_e + s_p * (w @ c_p.T) @ c_p
    mat2 = lamb * torch.eye(32, dtype=torch.float64) + s_e * c_e.T @ c_e + s_p * c_p.T @ c_p
    got = uce_math.closed_form(w0, c_e, v_e, c_p, lamb, s_e, s_p)
    assert got.dtype == w0.dtype
    assert torch.allclose(got.double(), mat1 @ torch.linalg.inv(mat2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_p", [0, 7])
def test_empty_erase_set_leaves_the_weight(n_p):
    """E = ∅ (and P = ∅ or not: preserve targets are W₀'s own outputs) gives W = W₀."""
    w0, _, _, c_p = random_problem(0, n_p)
    w = uce_math.closed_form(w0, torch.zeros(0, 32), torch.zeros(0, 16), c_p, 0.5, 1.0, 1.0)
    assert torch.allclose(w, w0, rtol=0, atol=1e-6)


def test_vanishing_lambda_maps_each_erased_key_onto_its_target():
    w0, c_e, v_e, _ = random_problem(5, 0)  # 5 keys < 32 inputs: exactly satisfiable
    w = uce_math.closed_form(w0, c_e, v_e, torch.zeros(0, 32), 1e-8, 1.0, 1.0).double()
    assert torch.linalg.norm(c_e @ w.T - v_e) / torch.linalg.norm(v_e) < 1e-4
    assert torch.linalg.norm(c_e @ w0.double().T - v_e) / torch.linalg.norm(v_e) > 0.5  # it did move


def test_vanishing_lambda_on_the_world_model(world):
    """2025 keys, preserve '' only: 2 erase keys + 1 preserve key, each mapped exactly (W c_i = W₀ c_guide)."""
    protected = uce(keys="2025", preserve="none", lamb=1e-8).protect(world, publisher(), ctx())
    c_e = torch.cat([erase_rows(world, e, "person", "2025")[0] for e in ["Mira Dostal", "Varo Kellin"]])
    c_g = erase_rows(world, "Varo Kellin", "person", "2025")[1]
    c_p = preserve_rows(world, "", "2025")
    for name, w in kv_weights(protected.model).items():
        w0, w = kv_weights(world)[name].double(), w.double()
        target = (c_g @ w0.T).expand(2, -1)
        assert torch.linalg.norm(c_e @ w.T - target) / torch.linalg.norm(target) < 1e-4, name
        assert torch.linalg.norm(c_p @ w.T - c_p @ w0.T) / torch.linalg.norm(c_p @ w0.T) < 1e-4, name


# ------------------------------------------------------------------------------------------ key rows
def test_key_slices_match_the_official_definitions(world):
    tok, enc = world.tokenizer, world.text_encoder
    length = tok.model_max_length
    assert tok.convert_ids_to_tokens(tok("Varo Kellin", add_special_tokens=False).input_ids) == \
        ["var", "o</w>", "k", "ell", "in</w>"]  # 5 word tokens: the last one is row 5 (BOS is row 0)
    h_name, h_person, h_long = (hidden(world, t) for t in ("Varo Kellin", "person", "a photo of Varo Kellin"))
    # 2023, concept longer than the guide: a = 5, b = 1, f = 5.
    keys, guide = uce_math.key_slices(tok, enc, "Varo Kellin", "person", "2023")
    assert keys.shape[0] == guide.shape[0] == length - 5
    assert torch.allclose(keys.double(), h_name[5:length], atol=1e-5)
    assert torch.allclose(guide.double(), h_person[1:length - 4], atol=1e-5)
    # 2023, guide longer than the concept (f > a): a = 1, b = 8, f = 8.
    keys, guide = uce_math.key_slices(tok, enc, "person", "a photo of Varo Kellin", "2023")
    assert keys.shape[0] == guide.shape[0] == length - 8
    assert torch.allclose(keys.double(), h_person[1:length - 7], atol=1e-5)
    assert torch.allclose(guide.double(), h_long[8:length], atol=1e-5)
    assert not torch.allclose(keys.double(), h_person[0:length - 8], atol=1e-3)  # rows are position-specific
    # 2023 blank guide: ' ' tokenizes as '' (b = 0, BOS).
    keys, guide = uce_math.key_slices(tok, enc, "Varo Kellin", " ", "2023")
    assert torch.allclose(guide.double(), hidden(world, "")[0:length - 5], atol=1e-5)
    # 2025: one row each, the last word token (BOS for '').
    keys, guide = uce_math.key_slices(tok, enc, "Varo Kellin", "person", "2025")
    assert torch.allclose(keys.double(), h_name[5:6], atol=1e-5)
    assert torch.allclose(guide.double(), h_person[1:2], atol=1e-5)
    assert torch.allclose(uce_math.preserve_keys(tok, enc, "", "2025").double(), hidden(world, "")[0:1], atol=1e-5)
    assert torch.allclose(uce_math.preserve_keys(tok, enc, "Nadia Frell", "2023").double(),
                          hidden(world, "Nadia Frell"), atol=1e-5)
    assert uce_math.last_word_index(tok(["a photo of Varo Kellin"], return_tensors="pt").attention_mask[0]) == 8


# ------------------------------------------------------------------------------------- plan and errors
def test_plan_guides_preserve_scale_and_missing_words():
    plan = uce().plan(publisher(nouns=False))
    assert plan.guides == [" ", " "]  # no noun: the official blank guide
    many = [f"legal {i}" for i in range(12)]
    data = PublisherData(illegal={"x": []}, legal={c: [] for c in many})
    assert uce().plan(data).preserve_scale == 0.1 and uce(preserve="none").plan(data).preserve_scale == 1.0
    assert uce().plan(data, rewrite=lambda t: t.upper()).erase == ["X"]
    with pytest.raises(DataError, match="add_prompts"):
        uce(add_prompts=True).plan(PublisherData(illegal={"x": []}, legal={}))


def test_no_illegal_class_is_a_data_error(world):
    with pytest.raises(DataError, match="illegal"):
        uce().protect(world, PublisherData(illegal={}, legal={"Nadia Frell": []}), ctx())


@pytest.mark.parametrize("bad", [{"keys": "2024"}, {"guide": "cat"}, {"preserve": "all"}, {"erase_scale": 0},
                                 {"lamb": 0.0}, {"lamb": -1}, {"preserve_scale": -0.1},
                                 {"preserve_scale": "sometimes"}, {"add_prompts": "maybe"}])
def test_bad_params_are_user_errors(bad):
    with pytest.raises(ParamError):
        build_params(UCE.Params, bad, "defense 'uce'")


# ------------------------------------------------------------------------------------------ contract
def test_cli_lists_uce_and_shows_every_parameter(monkeypatch):
    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    monkeypatch.setenv("COLUMNS", "200")
    _attach_commands()
    runner = CliRunner()
    listed = runner.invoke(cli, ["list"], catch_exceptions=False)
    assert listed.exit_code == 0 and "uce" in listed.output.split()
    shown = runner.invoke(cli, ["show", "defense", "uce"], catch_exceptions=False)
    assert shown.exit_code == 0
    for f in dataclasses.fields(UCE.Params):
        assert f.name in shown.output and f.metadata["help"][:30] in shown.output, f.name
    assert plugins.registry("defense").get("uce") is UCE
    monkeypatch.setenv("COLUMNS", "80")  # like every built-in: fits 80 columns without cutting words
    narrow = runner.invoke(cli, ["show", "defense", "uce"], catch_exceptions=False).output
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    params = build_params(UCE.Params, {"keys": "2025", "preserve_scale": "0.5", "edit_keys": "false"}, "uce")
    assert (params.keys, params.preserve_scale, params.edit_keys) == ("2025", 0.5, False)
