"""benchmarks/gpu_smoke.py: SD 1.5's sizes are SD 1.5's, and at tiny size on the CPU the table has its rows and
columns and a frozen run trains fewer parameters with less optimizer state (the engine's freeze)."""

from __future__ import annotations

import json

import pytest

from tests.sdlayout import gpu_smoke


def test_the_configs_are_stable_diffusion_15s():
    """Parameter counts of SD 1.5's UNet, VAE and CLIP text encoder, built without memory (meta tensors)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    smoke = gpu_smoke()
    with init_empty_weights():
        parts = [UNet2DConditionModel(**smoke.SD15_UNET), AutoencoderKL(**smoke.SD15_VAE),
                 CLIPTextModel(CLIPTextConfig(**smoke.SD15_TEXT))]
    counts = [sum(p.numel() for p in part.parameters()) for part in parts]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # runwayml/stable-diffusion-v1-5's parts
    assert len(list(parts[0].parameters())) == 686  # the tensors p = 0.3 is a share of


def test_tiny_run_prints_one_table_and_freezing_trains_less(tmp_path, capsys):
    smoke = gpu_smoke()
    argv = ["--device", "cpu", "--size", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]
    args = smoke.parse_args([*argv, "--ratios", "0.3,0.5"])
    assert (args.batch_size, args.mixed_precision, args.gradient_checkpointing) == (2, "no", False)
    rows = smoke.run(args)
    assert [r.mask for r in rows] == ["full", "R-0.3", "R-0.5"]
    full, r30, r50 = rows
    total = full.total_tensors
    assert (full.frozen_tensors, r30.frozen_tensors, r50.frozen_tensors) == (0, round(0.3 * total), round(0.5 * total))
    assert full.trainable_params > r30.trainable_params > r50.trainable_params > 0
    for row in rows:  # Adam keeps two moments and a step count of exactly the trainable tensors: none of frozen ones
        trainable_tensors = row.total_tensors - row.frozen_tensors
        assert row.optimizer_state == 2 * row.trainable_params + trainable_tensors and row.seconds_per_step > 0
    text = smoke.table(rows, cuda=False)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "mask", "frozen tensors", "trainable", "Adam state", "grads+Adam MB", "s/step", "time saved", "peak MB",
        "memory saved"]
    assert len(lines) == 2 + len(rows) and lines[2].split("|")[7].strip() == "0 %"  # full: the reference
    # a FreezeAsGuard mask file (the protect stage's freeze_mask.json) is timed as its own row
    model = smoke.sd15_model("tiny")
    frozen = set(smoke.random_mask(model, 0.3))
    tensors = {n: {"frozen": n in frozen, "numel": p.numel()} for n, p in model.unet.named_parameters()}
    mask = tmp_path / "freeze_mask.json"
    mask.write_text(json.dumps({"tensors": tensors}))
    assert smoke.file_mask(mask) == sorted(frozen)
    smoke.main([*argv, "--ratios", "0.3", "--mask", str(mask)])
    out = capsys.readouterr().out
    assert "SD 1.5 tiny size, cpu" in out and "| R-0.3 " in out and "| mask freeze_mask.json " in out
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in out.splitlines()[3:]}
    assert rows["mask freeze_mask.json"] == rows["R-0.3"]  # the same frozen tensors: the same trainable count


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        gpu_smoke().parse_args(["--steps", "1"])
