"""Model: layouts, prompts, tokenizer, clone, fingerprint, safetensors folders and their errors."""

import json
import time

import pytest
import torch

from advbench.errors import DataError
from advbench.model import Model
from advbench.testing import tiny_model
from advbench.tokenizer import clip_tokenizer


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach a hub from tests


def test_tiny_model_has_sd_architecture_and_builds_fast():
    tiny_model()  # first call pays the imports
    start = time.perf_counter()
    model = tiny_model(seed=1)
    assert time.perf_counter() - start < 1.0
    cfg = model.unet.config
    assert "CrossAttnDownBlock2D" in cfg.down_block_types and "CrossAttnUpBlock2D" in cfg.up_block_types
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert cfg.cross_attention_dim == model.text_encoder.config.hidden_size
    assert type(model.scheduler).__name__ == "DDPMScheduler"
    assert model.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert model.resolution == 32 and model.latent_shape == (12, 16, 16)


def test_tiny_models_are_seeded():
    assert tiny_model(seed=0).fingerprint() == tiny_model(seed=0).fingerprint()
    assert tiny_model(seed=0).fingerprint() != tiny_model(seed=1).fingerprint()


def test_clip_tokenizer_matches_openai_clip_ids():
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    tok = clip_tokenizer(max_length=77)
    assert len(tok) == 49408
    for text in ("a photo of person_03", "An oil painting, by Claude Monet!", "naïve café 42"):
        assert tok(text).input_ids == [49406, *reference.encode(text), 49407]


def test_reduced_vocabulary_keeps_special_tokens_last():
    tok = clip_tokenizer(max_length=8, n_merges=100)
    assert len(tok) == 512 + 100 + 2 and tok.eos_token_id == len(tok) - 1
    ids = tok(["a very long caption that will be truncated here"], padding="max_length", truncation=True,
              max_length=8).input_ids[0]
    assert len(ids) == 8 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("layout, shape", [("space_to_depth", (2, 12, 16, 16)), ("identity", (2, 3, 32, 32))])
def test_layouts_round_trip_pixels(layout, shape):
    model = tiny_model(layout=layout)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode_images(x)
    assert z.shape == shape and torch.equal(model.decode_latents(z), x)
    hidden = model.encode_prompts(["a photo of class_0", ""])
    assert hidden.shape == (2, model.tokenizer.model_max_length, model.text_encoder.config.hidden_size)
    assert model.unet(z, torch.tensor([1, 500]), hidden).sample.shape == shape


def test_space_to_depth_groups_pixel_blocks():
    model = tiny_model()
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 2:4, 4:6] = 1.0  # one 2×2 block of channel 0 → one latent position, 4 channels
    z = model.encode_images(x)
    assert z[0, :4, 1, 2].tolist() == [1.0] * 4 and z.sum() == 4


def test_layout_must_match_unet_channels():
    model = tiny_model(layout="identity")
    with pytest.raises(ValueError, match="12 input channels"):
        Model(model.unet, model.text_encoder, model.tokenizer, model.scheduler,
              layout={"type": "space_to_depth", "factor": 2})


def test_rewrite_prompt_longest_key_first():
    model = tiny_model()
    model.prompt_rewrites = {"person_1": "<p1>", "person_12": "<p12>"}
    assert model.rewrite_prompt("a photo of person_12 and person_1") == "a photo of <p12> and <p1>"


def test_clone_is_independent():
    model = tiny_model()
    before = model.fingerprint()
    copy = model.clone()
    with torch.no_grad():
        next(copy.unet.parameters()).add_(1.0)
    copy.tokenizer.add_tokens(["<new-token>"])
    copy.prompt_rewrites["x"] = "y"
    assert model.fingerprint() == before and len(model.tokenizer) + 1 == len(copy.tokenizer)
    assert copy.fingerprint() != before


def test_fingerprint_sees_weights_rewrites_and_scheduler():
    model = tiny_model()
    base = model.fingerprint()
    with torch.no_grad():
        list(model.text_encoder.parameters())[-1].view(-1)[0] += 1e-3
    assert model.fingerprint() != base
    other = tiny_model()
    other.prompt_rewrites = {"a": "b"}
    assert other.fingerprint() != base
    from diffusers import DDPMScheduler

    other = tiny_model()
    other.scheduler = DDPMScheduler.from_config(other.scheduler.config, prediction_type="v_prediction")
    assert other.fingerprint() != base


def test_save_load_round_trip_safetensors_only(tmp_path):
    model = tiny_model(seed=2)
    model.prompt_rewrites = {"class_0": "<class_0>"}
    model.save(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in files and "text_encoder/model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files)
    meta = json.loads((tmp_path / "m" / "advbench_model.json").read_text())
    assert meta == {"format_version": 1, "layout": {"type": "space_to_depth", "factor": 2},
                    "prompt_rewrites": {"class_0": "<class_0>"}, "resolution": 32}
    loaded = Model.load(tmp_path / "m")
    assert loaded.fingerprint() == model.fingerprint()
    z, t = torch.randn(1, 12, 16, 16), torch.tensor([10])
    with torch.no_grad():
        # same bytes; a loaded tensor's memory layout may pick another kernel, hence float tolerance
        assert torch.allclose(loaded.unet(z, t, loaded.encode_prompts(["a"])).sample,
                              model.unet(z, t, model.encode_prompts(["a"])).sample, atol=1e-5)


def test_to_moves_and_casts():
    model = tiny_model().to("cpu", torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    assert model.to(dtype=torch.float32).dtype == torch.float32


def _saved(tmp_path):
    tiny_model().save(tmp_path / "m")
    return tmp_path / "m"


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; point --model at a diffusers folder"):
        Model.load(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist.*write hf:someone/some-model"):
        Model.load("someone/some-model")  # looks like a hub id, but only hf:someone/some-model reaches the hub


@pytest.mark.parametrize("victim, expected", [
    ("unet/diffusion_pytorch_model.safetensors", r"has no unet/diffusion_pytorch_model.safetensors; point --model"),
    ("text_encoder/config.json", r"has no text_encoder/config.json"),
    ("scheduler/scheduler_config.json", r"has no scheduler/scheduler_config.json"),
    ("advbench_model.json", r"has neither vae/ nor advbench_model.json"),
])
def test_missing_component_names_the_file(tmp_path, victim, expected):
    folder = _saved(tmp_path)
    (folder / victim).unlink()
    with pytest.raises(DataError, match=expected) as info:
        Model.load(folder)
    assert "\n" not in str(info.value)


def test_pickle_weights_are_refused_with_a_fix(tmp_path):
    folder = _saved(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(DataError, match=r"it has diffusion_pytorch_model.bin: advbench loads safetensors only"):
        Model.load(folder)


@pytest.mark.parametrize("part, name", [("unet", "diffusion_pytorch_model.safetensors"),
                                        ("text_encoder", "model.safetensors")])
def test_corrupt_safetensors_is_a_data_error(tmp_path, part, name):
    folder = _saved(tmp_path)
    path = folder / part / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated download
    with pytest.raises(DataError, match=f"weights .*{part}/{name} are corrupt or incomplete"):
        Model.load(folder)


def _tiny_sd_pipeline_folder(folder):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    small = tiny_model()
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32, scaling_factor=0.18215)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=small.text_encoder, tokenizer=small.tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def test_loads_a_stable_diffusion_pipeline_folder(tmp_path):
    pipe = _tiny_sd_pipeline_folder(tmp_path / "sd")
    model = Model.load(tmp_path / "sd")
    assert model.vae is not None and model.layout is None
    assert type(model.scheduler).__name__ == "DDPMScheduler"  # the training scheduler, from PNDM's config
    assert model.scheduler.config.beta_schedule == "scaled_linear" and model.scheduler.config.steps_offset == 1
    assert model.resolution == 32 and model.latent_shape == (4, 16, 16)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode_images(x, generator=torch.Generator().manual_seed(0))
        expected = pipe.vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0)) * 0.18215
        assert torch.allclose(z, expected, atol=1e-6)
        assert model.decode_latents(z).shape == (1, 3, 32, 32)
    # an advbench save of it is again a pipeline folder that diffusers itself can open
    model.save(tmp_path / "again")
    from diffusers import StableDiffusionPipeline

    reopened = StableDiffusionPipeline.from_pretrained(tmp_path / "again", safety_checker=None)
    assert type(reopened.unet).__name__ == "UNet2DConditionModel"
    assert Model.load(tmp_path / "again").fingerprint() == model.fingerprint()
