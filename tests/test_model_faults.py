"""A model part that fails to load names the real culprit: the config, the weights, or the tokenizer, with the
library's whole reason on one line (advbench.modelfiles)."""

import json
import os
import re
import shutil

import pytest
import torch

from advbench.errors import DataError
from advbench.model import Model, check_folder
from advbench.modelfiles import one_line, reason
from advbench.testing import tiny_model

UNET_W = "unet/diffusion_pytorch_model.safetensors"
TEXT_W = "text_encoder/model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults") / "m"
    tiny_model().save(folder)
    return folder


@pytest.fixture
def model(saved, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    return folder


def _edit_config(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _drop_tensor(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    victim = sorted(tensors)[1]
    del tensors[victim]
    save_file(tensors, str(path), metadata={"format": "pt"})
    return victim


def _error(folder) -> str:
    with pytest.raises(DataError) as info:
        Model.load(folder)
    message = str(info.value)
    assert "\n" not in message and "  " not in message, message
    assert not message.endswith("(...)") and (message[-1].isalnum() or message[-1] in ")'"), message  # not cut
    print(message)
    return message


def test_unet_config_with_other_channels_blames_the_config(model):
    _edit_config(model / "unet/config.json", block_out_channels=[32, 64])
    message = _error(model)
    assert message.startswith(f"config {model / 'unet/config.json'} does not match the weights {model / UNET_W}: ")
    # all of them counted (diffusers itself stops at the first), one shown with both shapes
    assert re.search(r": \d{2,} tensors have other shapes, e\.g\. [\w.]+: weights \[16(, \d+)*\], "
                     r"config expects \[32(, \d+)*\]", message), message


def test_text_encoder_config_with_other_hidden_size_blames_the_config(model):
    _edit_config(model / "text_encoder/config.json", hidden_size=64)
    message = _error(model)
    assert message.startswith(f"config {model / 'text_encoder/config.json'} does not match the weights "
                              f"{model / TEXT_W}: ")
    assert re.search(r"\d+ tensors have other shapes, e\.g\. [\w.]+: weights \[(\d+, )?32\], config expects "
                     r"\[(\d+, )?64\]", message), message


def test_config_with_more_layers_is_refused_not_randomly_initialised(model):
    _edit_config(model / "text_encoder/config.json", num_hidden_layers=2)  # transformers would only warn
    message = _error(model)
    assert "does not match the weights" in message
    assert re.search(r"16 weights missing from the file \(e\.g\. [\w.]*layers\.1\.", message), message


@pytest.mark.parametrize("part, weights", [("unet", UNET_W), ("text_encoder", TEXT_W)])
def test_a_tensor_deleted_from_the_weights_is_refused(model, part, weights):
    victim = _drop_tensor(model / weights)  # diffusers and transformers would fill it with random values
    message = _error(model)
    assert f"does not match the weights {model / weights}: 1 weight missing from the file (" in message
    assert victim.split(".")[-2] in message and "weights" in message and "config" in message


def test_extra_tensor_in_the_weights_is_refused(model):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / UNET_W))
    tensors["extra.weight"] = torch.zeros(3)
    save_file(tensors, str(model / UNET_W), metadata={"format": "pt"})
    assert "1 unexpected weight in the file (extra.weight)" in _error(model)


def test_config_not_json_names_the_config_and_the_position(model):
    (model / "unet/config.json").write_text('{"in_channels": 12,\n "block_out_channels": [16, 32\n}')
    message = _error(model)
    assert message.startswith(f"config {model / 'unet/config.json'} is wrong: not valid JSON (")
    assert "line 3 column 1" in message and "restore the config saved together with the weights" in message


def test_config_a_json_list_is_wrong(model):
    (model / "text_encoder/config.json").write_text("[1, 2]")
    message = _error(model)
    assert message.startswith(f"config {model / 'text_encoder/config.json'} is wrong: a JSON list instead of an "
                              f"object")


@pytest.mark.parametrize("part, changes, expected", [
    ("unet", {"down_block_types": ["NoSuchBlock2D", "DownBlock2D"]}, "NoSuchBlock2D does not exist"),
    ("text_encoder", {"hidden_act": "no_such_activation"}, "no_such_activation"),
    ("scheduler", {"beta_schedule": "no_such_schedule"}, "no_such_schedule"),
])
def test_config_values_the_class_cannot_take_blame_the_config(model, part, changes, expected):
    name = "scheduler/scheduler_config.json" if part == "scheduler" else f"{part}/config.json"
    _edit_config(model / name, **changes)
    message = _error(model)
    assert message.startswith(f"config {model / name} is wrong: ") and expected in message, message
    assert "cannot be built from it" in message


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[: len(b) // 2], "incomplete metadata, file not fully covered"),
    (lambda b: os.urandom(4096), "header too large"),
    (lambda b: b[: 8 + int.from_bytes(b[:8], "little")], "incomplete metadata, file not fully covered"),
    (lambda b: b"", "header too small"),
], ids=["truncated", "random-bytes", "header-only", "empty"])
@pytest.mark.parametrize("weights", [UNET_W, TEXT_W])
def test_corrupt_weights_blame_the_weights(model, weights, damage, why):
    path = model / weights
    path.write_bytes(damage(path.read_bytes()))
    message = _error(model)
    assert message == (f"weights {path} are corrupt or incomplete: Error while deserializing header: {why}; replace "
                       f"the file with a copy saved by save_pretrained(safe_serialization=True)")
    with pytest.raises(DataError, match="corrupt or incomplete"):
        check_folder(model)  # the same check before any work, from the header alone


@pytest.mark.parametrize("content, expected", [("garbage{", "tokenizer.json is not valid JSON (Expecting value"),
                                               ('{"model": 3}', "corrupt or incomplete: ")])
def test_corrupt_tokenizer_names_the_tokenizer_folder(model, content, expected):
    (model / "tokenizer/tokenizer.json").write_text(content)
    message = _error(model)
    assert message.startswith(f"tokenizer {model / 'tokenizer'} is corrupt") and expected in message, message
    assert "tokenizer.save_pretrained" in message


def test_meta_file_that_does_not_fit_the_model(model):
    meta = json.loads((model / "advbench_model.json").read_text())
    (model / "advbench_model.json").write_text(json.dumps({**meta, "layout": {"type": "identity"}}))
    assert "advbench_model.json does not fit the model" in _error(model)


def test_clean_folders_load_and_pass_the_check(saved):
    from advbench_plugins.world.build import model_dir

    for folder in (saved, model_dir()):
        check_folder(folder)
        Model.load(folder)  # no missing, unexpected or mismatched key in advbench's own saves


def test_long_reasons_end_at_a_clause_not_mid_word():
    text = "The first clause explains the problem. " * 40 + "Tail"
    cut = one_line(text, limit=200)
    assert cut.endswith("problem. (...)") and len(cut) < 220
    assert one_line("line one\n  line two\tthree") == "line one line two three"
    assert reason(KeyError("nope")) == "KeyError: 'nope'" and reason(OSError("")) == "OSError"
