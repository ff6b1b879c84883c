"""Dark Miner: mining moves only c and lowers L_M, the verify score and the stop rule, adapters on every to_v
(rank 8), SGD with the paper's schedule and clip, l_p = 0 with fresh adapters, l_c drops, the embedding draw,
what changes in the protected model, the artifacts, the choices where the paper is silent, the plugin contract."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advbench.errors import DataError, ParamError
from advbench.interfaces import Context, Defense, ImageEncoder, ProtectedModel, PublisherData
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.defenses import darkminer_math as dm
from advbench_plugins.defenses.darkminer import CURVES_FILE, EMBEDDINGS_FILE, DarkMiner, Session

FAST = {"loops": 1, "mine_steps": 4, "circumvent_steps": 4, "sample_steps": 2, "tau": -1.0}
ILLEGAL = ("class_0", "class_1")
SIDE = 16  # the tiny model at 16 px (8 x 8 latents): the same code paths, a quarter of the time of 32 px


def tiny():
    return tiny_model(resolution=SIDE)


class StubEncoder(ImageEncoder):
    """A fixed random projection of the pixels, normalised to unit rows."""

    def __init__(self, dim=16, seed=0, side=SIDE):
        self.w = np.random.default_rng(seed).normal(size=(side * side * 3, dim)).astype(np.float32)

    def encode(self, images):
        x = (np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 127.5 - 1.0) @ self.w
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def fingerprint(self):
        return "stub-projection-0"


def darkminer(**kw):
    return DarkMiner(build_params(DarkMiner.Params, {**FAST, **kw}, "defense 'darkminer'"))


def publisher(n=6, encoder=True, side=SIDE):
    data = tiny_dataset(n_classes=3, n_per_class=n, seed=0, resolution=side)
    return PublisherData(illegal={c: data.examples(c) for c in ILLEGAL}, legal={"class_2": data.examples("class_2")},
                         nouns={c: "pattern" for c in (*ILLEGAL, "class_2")},
                         encoder=StubEncoder(side=side) if encoder else None)


def ctx(tmp_path=None, seed=0):
    return Context(seed=seed, progress=False, **({"work_dir": tmp_path} if tmp_path is not None else {}))


def state(model):
    return {f"{part}.{n}": t.detach().clone() for part in ("unet", "text_encoder")
            for n, t in getattr(model, part).state_dict().items()}


def fixed(seed=5):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- adapters
def test_adapters_sit_on_every_to_v_of_the_world_unet_with_rank_8():
    from peft.tuners.lora import LoraLayer

    from advbench.model import Model
    from advbench_plugins.world.build import model_dir

    work = Model.load(model_dir())
    every_to_v = sorted(n for n, m in work.unet.named_modules() if n.endswith(".to_v"))
    with darkminer().session(work, publisher(side=32), ctx()) as session:
        assert len(session.names) == len(every_to_v) == 14  # 7 transformer blocks x (attn1 + attn2)
        assert sorted(session.names) == every_to_v
        assert sum(n.endswith(".attn1.to_v") for n in session.names) == 7
        assert sum(n.endswith(".attn2.to_v") for n in session.names) == 7
        wrapped = sorted(n for n, m in work.unet.named_modules() if isinstance(m, LoraLayer))
        assert wrapped == every_to_v  # nothing else carries an adapter
        for name in every_to_v:
            layer = work.unet.get_submodule(name)
            assert layer.r["default"] == 8 and layer.scaling["default"] == 1.0  # alpha = rank (the choice)
            assert layer.lora_A["default"].weight.shape[0] == 8 and layer.lora_B["default"].weight.shape[1] == 8
            assert not torch.any(layer.lora_B["default"].weight)  # fresh: B = 0
        lora = [p for n, p in work.unet.named_parameters() if "lora_" in n]
        assert [id(p) for p in session.adapters] == [id(p) for p in lora] and len(lora) == 28
        assert all(p.requires_grad == ("lora_" in n) for n, p in work.unet.named_parameters())
        assert not any(p.requires_grad for p in work.text_encoder.parameters())


def test_theta_prime_is_the_frozen_original_with_the_adapters_disabled():
    model = tiny()
    work = model.clone()
    pub = publisher()
    with darkminer(circumvent_steps=3).session(work, pub, ctx()) as session:
        c = session.c0 + 0.5 * torch.randn(session.c0.shape, generator=fixed(1))
        session.circumvent([("class_0", c)])
        x = torch.randn(2, *work.latent_shape, generator=fixed(2))
        t, cond = torch.tensor([10, 500]), c.expand(2, -1, -1)
        flags = {n: p.requires_grad for n, p in work.unet.named_parameters()}
        with torch.no_grad():
            trained = work.unet(x, t, cond).sample
            with dm.original(work.unet):
                theirs = work.unet(x, t, cond).sample
            original = model.unet(x, t, cond).sample
        assert {n: p.requires_grad for n, p in work.unet.named_parameters()} == flags  # peft's toggle undone
    assert torch.equal(theirs, original) and not torch.equal(trained, original)


# --------------------------------------------------------------------------------------------- mining
def test_mining_lowers_the_loss_on_the_pool_images_and_changes_nothing_but_c():
    work = tiny()
    with darkminer(mine_steps=15).session(work, publisher(), ctx()) as session:
        before_state = state(work)
        pixels = session.sample("class_0")
        assert len(pixels) == 3  # k = 3 images of the class's pool
        init = session.init("class_0")
        start = session.mining_loss(init, pixels, fixed())  # the same t and noise before and after
        c, losses = session.mine(pixels, init)
        end = session.mining_loss(c, pixels, fixed())
        assert len(losses) == 15 and end < start
        assert not torch.equal(c, init) and c.shape == session.c0.shape
        after = state(work)
        assert set(after) == set(before_state) and all(torch.equal(after[n], before_state[n]) for n in after)
        assert type(session.mine_optimizer) is torch.optim.Adam
        assert [id(p) for p in session.mine_optimizer.param_groups[0]["params"]] == [id(session.c)]
        assert all(a.requires_grad for a in session.adapters) and not session.c.requires_grad


def test_c_is_an_anchor_shaped_sequence_started_at_the_anchor_or_a_caption():
    work = tiny()
    pub = publisher()
    with darkminer().session(work, pub, ctx()) as session:
        with torch.no_grad():
            anchor = work.encode_prompts(["a photo"])
            caption = work.encode_prompts([pub.illegal["class_0"][0].text])
        assert session.c0.shape == (1, work.tokenizer.model_max_length, work.text_encoder.config.hidden_size)
        assert torch.equal(session.c0, anchor) and torch.equal(session.init("class_0"), anchor)
    with darkminer(init="caption").session(tiny(), pub, ctx()) as session:
        assert torch.equal(session.init("class_0"), caption)


def test_mining_loss_is_the_engines_draws_as_a_squared_norm_per_image():
    from advbench.finetune import diffusion_loss, diffusion_prediction, noised_latents

    model = tiny()
    pixels = torch.rand(3, 3, SIDE, SIDE) * 2 - 1
    c = model.encode_prompts(["a photo of class_0"]).detach()
    with torch.no_grad():
        ours = dm.mining_loss(model, pixels, c, fixed())
        engine = diffusion_loss(model, pixels, ["a photo of class_0"] * 3, fixed())
        by_caption = diffusion_prediction(model, pixels, ["a photo of class_0"] * 3, fixed())
        by_hidden = diffusion_prediction(model, pixels, None, fixed(), hidden=c.expand(3, -1, -1))
        noisy, timesteps, target = noised_latents(model, pixels, fixed())
        direct = model.unet(noisy, timesteps, c.expand(3, -1, -1)).sample
    assert all(torch.equal(a, b) for a, b in zip(by_caption, by_hidden))  # the core's hidden= path: same draws
    assert torch.equal(by_hidden[0], direct) and torch.equal(by_hidden[1], target)
    elements = int(np.prod(model.latent_shape))
    assert float(ours) == pytest.approx(float(engine) * elements, rel=1e-5)


# --------------------------------------------------------------------------------------------- verify
def test_verify_score_is_the_mean_of_delta_cosines():
    rng = np.random.default_rng(0)
    enc_c, enc_r, enc_e = (rng.normal(size=(5, 7)) for _ in range(3))
    expected = np.mean([np.dot(a - r, e - r) / (np.linalg.norm(a - r) * np.linalg.norm(e - r))
                        for a, r, e in zip(enc_c, enc_r, enc_e)])
    assert dm.verify_score(enc_c, enc_r, enc_e) == pytest.approx(expected, abs=1e-12)
    assert dm.verify_score(enc_e, enc_r, enc_e) == pytest.approx(1.0)
    assert dm.verify_score(enc_r, enc_r, enc_e) == 0.0  # x_c = x_r: nothing drawn


def test_verify_generates_from_c_and_the_anchor_and_scores_with_the_encoder():
    from advbench.sampling import SamplingConfig, generate, to_uint8

    work = tiny()
    pub = publisher()
    with darkminer(sample_steps=3).session(work, pub, ctx()) as session:
        pixels = session.sample("class_1")
        c = session.c0 + torch.randn(session.c0.shape, generator=fixed(3))
        out = session.verify(c, pixels, "class_1", loop=2)
        seed = dm.derived_seed(0, "verify", "class_1", 2)
        cfg = SamplingConfig(scheduler="ddim", steps=3, guidance_scale=3.0)
        x_c = generate(work, c.expand(3, -1, -1), cfg, Context(seed=seed, progress=False))
        x_r = generate(work, session.c0.expand(3, -1, -1), cfg, Context(seed=seed, progress=False))
    assert np.array_equal(out["x_c"], x_c) and np.array_equal(out["x_r"], x_r)  # pairwise the same noise
    assert np.array_equal(out["x_e"], to_uint8(pixels))
    enc = pub.encoder
    d_c, d_e = enc.encode(x_c) - enc.encode(x_r), enc.encode(out["x_e"]) - enc.encode(x_r)
    cosines = (d_c * d_e).sum(1) / (np.linalg.norm(d_c, axis=1) * np.linalg.norm(d_e, axis=1))
    assert out["s"] == pytest.approx(float(np.mean(cosines)), abs=1e-5)


def test_the_loop_stops_at_the_first_score_at_or_below_tau(monkeypatch, tmp_path):
    scripted = {"class_0": [0.5, 0.3, 0.2, 0.1], "class_1": [0.9, 0.8, 0.7]}
    calls = []

    def verify(self, c, pixels, cls, loop):
        calls.append((cls, loop))
        return {"s": scripted[cls][loop - 1]}

    stages = []
    circumvent = Session.circumvent

    def recording(self, embeddings):
        stages.append([cls for cls, _ in embeddings])
        return circumvent(self, embeddings)

    monkeypatch.setattr(Session, "verify", verify)
    monkeypatch.setattr(Session, "circumvent", recording)
    info = darkminer(loops=3, tau=0.2).protect(tiny(), publisher(), ctx(tmp_path)).info
    assert calls == [("class_0", 1), ("class_0", 2), ("class_0", 3), ("class_1", 1), ("class_1", 2), ("class_1", 3)]
    assert info["classes"]["class_0"] == {"s": [0.5, 0.3, 0.2], "stop": "s <= tau at loop 3", "loops": 3,
                                          "pool_images": 6}
    assert info["classes"]["class_1"]["stop"] == "loop cap" and info["classes"]["class_1"]["s"] == [0.9, 0.8, 0.7]
    # circumvented: every embedding above tau, in order; the verified one (s <= tau) is not circumvented
    assert stages == [["class_0"], ["class_0"] * 2, ["class_0"] * 2 + ["class_1"], ["class_0"] * 2 + ["class_1"] * 2,
                      ["class_0"] * 2 + ["class_1"] * 3]
    assert info["loops_run"] == 6 and info["circumventions"] == 5
    assert [row.get("embeddings") for row in info["loops"]] == [1, 2, None, 3, 4, 5]
    from safetensors import safe_open

    with safe_open(str(tmp_path / EMBEDDINGS_FILE), "pt") as f:  # every mined embedding, the verified one too
        meta = json.loads(f.metadata()["embeddings"])
        assert [(m["class"], m["loop"], m["s"]) for m in meta] == [
            ("class_0", 1, 0.5), ("class_0", 2, 0.3), ("class_0", 3, 0.2), ("class_1", 1, 0.9), ("class_1", 2, 0.8),
            ("class_1", 3, 0.7)]
        assert all(f.get_tensor(m["name"]).shape == (16, 32) for m in meta)
    curves = json.loads((tmp_path / CURVES_FILE).read_text())
    assert [len(r["mining"]) for r in curves] == [4] * 6
    assert [len(r["circumvent"]) for r in curves] == [4, 4, 0, 4, 4, 4]
    assert info["artifacts"] == [EMBEDDINGS_FILE, CURVES_FILE] and info["encoder"] == "stub-projection-0"


# ----------------------------------------------------------------------------------------- circumvent
def test_sgd_over_the_adapters_only_with_the_paper_schedule_and_clip():
    work = tiny()
    with darkminer(circumvent_steps=10).session(work, publisher(), ctx()) as session:
        opt = session.optimizer
        assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
        group = opt.param_groups[0]
        assert group["momentum"] == 0 and group["weight_decay"] == 0
        assert [id(p) for p in group["params"]] == [id(p) for n, p in work.unet.named_parameters() if "lora_" in n]
        base = {n: p.detach().clone() for n, p in work.unet.named_parameters() if "lora_" not in n}
        text = state(work)
        c = session.c0 + torch.randn(session.c0.shape, generator=fixed(4))
        rows = session.circumvent([("class_0", c)])
        assert [r["lr"] for r in rows] == [0.01] * 8 + [0.001] * 2  # 0.01 -> 0.001 at 80 %
        assert session.p.max_grad_norm == 100.0
        for r in rows:  # the clipped gradient's norm is min(norm, 100)
            assert r["clipped_norm"] == pytest.approx(min(r["grad_norm"], 100.0), rel=1e-4)
        assert all(torch.equal(p, base[n]) for n, p in work.unet.named_parameters() if "lora_" not in n)
        after = state(work)
        assert all(torch.equal(after[n], text[n]) for n in text if n.startswith("text_encoder."))
        assert any(not torch.equal(after[n], text[n]) for n in text if "lora_B" in n)
    with darkminer(circumvent_steps=3, max_grad_norm=1e-4).session(tiny(), publisher(), ctx()) as session:
        rows = session.circumvent([("class_0", session.c0 + torch.randn(session.c0.shape, generator=fixed(4)))])
        assert all(r["grad_norm"] > 1e-4 and r["clipped_norm"] == pytest.approx(1e-4, rel=1e-3) for r in rows)


def test_step_schedules():
    assert [dm.step_lr(s, 10, 0.01, 0.001, 0.8) for s in range(10)] == [0.01] * 8 + [0.001] * 2
    assert [dm.step_lr(s, 1000, 0.1, 0.01, 0.5) for s in (0, 499, 500, 999)] == [0.1, 0.1, 0.01, 0.01]
    p = DarkMiner.Params()
    assert (p.mine_lr, p.mine_lr_final, p.mine_decay_at, p.mine_max_grad_norm) == (0.1, 0.01, 0.5, 10.0)
    assert (p.lr, p.lr_final, p.decay_at, p.max_grad_norm) == (0.01, 0.001, 0.8, 100.0)
    assert (p.alpha_c, p.alpha_p, p.r, p.tau, p.k, p.lora_rank, p.lora_alpha) == (1.0, 0.5, 0.7, 0.2, 3, 8, 8.0)


def test_with_fresh_adapters_l_p_is_exactly_zero_and_circumventing_lowers_l_c():
    work = tiny()
    with darkminer(circumvent_steps=30, lr=0.01).session(work, publisher(), ctx()) as session:
        pixels = session.pools["class_0"].pixels
        c, _ = session.mine(session.sample("class_0"), session.init("class_0"))
        l_c, l_p = session.circumvent_losses(c, pixels, fixed())
        assert l_p == 0.0 and l_c > 0  # B = 0: θ and θ′ agree bit for bit on the same batch
        rows = session.circumvent([("class_0", c)])
        l_c_after, l_p_after = session.circumvent_losses(c, pixels, fixed())  # the same t and noise
        assert l_c_after < l_c and l_p_after > 0
        assert rows[0]["l_p"] == 0.0 and all(r["index"] == 0 for r in rows)


def test_the_current_embedding_is_drawn_with_probability_r():
    g = torch.Generator().manual_seed(0)
    draws = [dm.draw_embedding(5, 0.7, g) for _ in range(20000)]
    share = draws.count(4) / len(draws)
    assert 0.68 <= share <= 0.72
    earlier = np.bincount(draws, minlength=5)[:4] / len(draws)
    assert np.allclose(earlier, 0.3 / 4, atol=0.01)  # the earlier ones uniformly
    before = g.get_state()
    assert dm.draw_embedding(1, 0.7, g) == 0 and torch.equal(g.get_state(), before)  # nothing earlier, no draw
    for seed in (1, 2):  # seeded: the same draws again
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert [dm.draw_embedding(3, 0.7, a) for _ in range(50)] == [dm.draw_embedding(3, 0.7, b) for _ in range(50)]


def test_each_circumvention_step_draws_the_embedding_and_its_classs_pool(monkeypatch):
    seen = []
    terms = dm.circumvent_terms

    def recording(model, pixels, c, c0, generator):
        seen.append((float(c.flatten()[0]), pixels.clone()))
        return terms(model, pixels, c, c0, generator)

    monkeypatch.setattr(dm, "circumvent_terms", recording)
    with darkminer(circumvent_steps=40).session(tiny(), publisher(), ctx()) as session:
        embeddings = [("class_0", torch.full_like(session.c0, 1.0)), ("class_1", torch.full_like(session.c0, 2.0))]
        rows = session.circumvent(embeddings)
        pools = {cls: session.pools[cls].pixels for cls in ILLEGAL}
    assert [r["index"] for r in rows] == [{1.0: 0, 2.0: 1}[v] for v, _ in seen]
    assert 0 < sum(r["index"] == 0 for r in rows) < 40
    for (value, pixels) in seen:  # x_t comes from the pool of the embedding's own class
        pool = pools["class_0" if value == 1.0 else "class_1"]
        assert any(torch.equal(pixels[0], image) for image in pool)


# ------------------------------------------------------------------------------------ protected model
def test_only_the_to_v_weights_differ_in_the_protected_model(tmp_path):
    model = tiny()
    fingerprint, before = model.fingerprint(), state(model)
    protected = darkminer(loops=2).protect(model, publisher(), ctx(tmp_path))
    assert isinstance(protected, ProtectedModel) and protected.constraints == []
    assert model.fingerprint() == fingerprint  # the input model is untouched
    after = state(protected.model)
    assert set(after) == set(before) and not any("lora" in n for n in after)  # merged, no adapter left
    to_v = {n for n in before if n.startswith("unet.") and n.endswith(".to_v.weight")}
    assert len(to_v) == 8  # the tiny UNet: 4 transformer blocks x (attn1 + attn2)
    assert {n for n in before if not torch.equal(after[n], before[n])} == to_v
    assert not getattr(protected.model.unet, "peft_config", None)
    info = protected.info
    assert info["lora"] == {"modules": 8, "tensors": 16, "elements": 2944, "rank": 8, "alpha": 8.0}
    assert info["loops_run"] == 4 and info["circumventions"] == 4 and info["max_relative_change"] > 0
    assert all(row["l_p_last"] is not None and row["current_share"] <= 1 for row in info["loops"])
    assert all(len(row["mining_eval"]) == 2 and len(row["l_c_eval"]) == 2 and row["l_p_eval"][0] >= 0
               for row in info["loops"])
    assert info["loops"][0]["l_p_eval"][0] == 0.0  # fresh adapters before the first circumvention
    assert info["loops"][0]["current_share"] == 1.0  # one embedding: always the current one
    assert info["theta_prime"].startswith("the input UNet")
    protected.save(tmp_path / "p")
    loaded = ProtectedModel.load(tmp_path / "p")
    assert loaded.info == protected.info and loaded.model.fingerprint() == protected.model.fingerprint()


def test_runs_are_seeded(tmp_path):
    a = darkminer().protect(tiny(), publisher(), ctx(tmp_path / "a", seed=3))
    b = darkminer().protect(tiny(), publisher(), ctx(tmp_path / "b", seed=3))
    assert a.model.fingerprint() == b.model.fingerprint()
    assert a.info["loops"] == b.info["loops"]
    for name in (CURVES_FILE, EMBEDDINGS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_generated_pool_is_the_input_models_images_of_the_pool_prompt():
    work = tiny()
    with darkminer(pool="generated", pool_size=4).session(work, publisher(), ctx()) as session:
        pool = session.pools["class_0"]
        assert len(pool.examples) == 4 and {e.text for e in pool.examples} == {"a class_0 photo"}
        assert pool.pixels.shape == (4, 3, SIDE, SIDE)
        images = {e.image.tobytes() for e in publisher().illegal["class_0"]}
        assert not any(e.image.tobytes() in images for e in pool.examples)


def test_refusals(tmp_path):
    with pytest.raises(DataError, match="supplies no defense encoder"):
        darkminer().protect(tiny(), publisher(encoder=False), ctx(tmp_path))
    empty = PublisherData(illegal={"class_0": []}, legal={}, encoder=StubEncoder())
    with pytest.raises(DataError, match="at least one illegal class"):
        darkminer().protect(tiny(), empty, ctx(tmp_path))
    with pytest.raises(DataError, match="fewer than k=3"):
        darkminer().protect(tiny(), publisher(n=2), ctx(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before any work
    for bad in ({"loops": 0}, {"lr": 0}, {"r": 1.5}, {"tau": 2}, {"alpha_c": 0, "alpha_p": 0},
                {"pool": "web"}, {"pool_prompt": "a photo"}, {"decay_at": -0.1}, {"init": "random"}):
        with pytest.raises(ParamError):
            build_params(DarkMiner.Params, bad, "defense 'darkminer'")


# ------------------------------------------------------------------------------------------ contract
def test_cli_lists_darkminer_and_shows_every_parameter(monkeypatch):
    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    monkeypatch.setenv("COLUMNS", "200")
    _attach_commands()
    runner = CliRunner()
    listed = runner.invoke(cli, ["list"], catch_exceptions=False)
    assert listed.exit_code == 0 and "darkminer" in listed.output.split()
    shown = runner.invoke(cli, ["show", "defense", "darkminer"], catch_exceptions=False)
    assert shown.exit_code == 0
    for f in dataclasses.fields(DarkMiner.Params):
        assert f.name in shown.output and f.metadata["help"][:30] in shown.output, f.name
    assert plugins.registry("defense").get("darkminer") is DarkMiner
    assert DarkMiner.uses_encoder and issubclass(DarkMiner, Defense)
    monkeypatch.setenv("COLUMNS", "80")
    narrow = runner.invoke(cli, ["show", "defense", "darkminer"], catch_exceptions=False).output
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    params = build_params(DarkMiner.Params, {"pool": "generated", "loops": "3", "r": "0.5"}, "darkminer")
    assert (params.pool, params.loops, params.r) == ("generated", 3, 0.5)


def test_every_registered_defense_builds_and_shows_within_80_columns(monkeypatch):
    from advbench import plugins
    from advbench.cli.main import _attach_commands, cli

    _attach_commands()
    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    names = plugins.registry("defense").names()
    assert {"none", "random", "freezeasguard", "uce", "sophon", "imma", "darkminer"} <= set(names)
    for name in names:
        cls = plugins.registry("defense").get(name)
        assert issubclass(cls, Defense) and isinstance(cls.uses_encoder, bool)
        cls(build_params(cls.Params, {}, name))
        out = runner.invoke(cli, ["show", "defense", name], catch_exceptions=False).output
        assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, name
