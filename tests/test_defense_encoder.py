"""The defense-side image encoder: the world's verifier is not the align judge, the runner hands it only to a
defense with ``uses_encoder`` and keys that defense's protect stage by it, and the folder domain's open_clip
encoder comes from a local checkpoint other than the judge's."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from advbench.errors import DataError, UserError
from advbench.hookspecs import hookimpl
from advbench.interfaces import ImageEncoder
from advbench.params import param
from advbench_plugins.world.build import judges_dir
from tests.toyworld import EncoderProbe, ToyDomain, ToyPlugin


# --------------------------------------------------------------------------------------- the world
def test_verifier_shares_the_align_judges_architecture_but_no_weights():
    from safetensors.numpy import load_file

    align, verifier = (load_file(str(judges_dir() / f"{k}.safetensors")) for k in ("align", "verifier"))
    assert align.keys() == verifier.keys()
    tower = [k for k in align if k.startswith("backbone.") and "num_batches_tracked" not in k]
    assert tower and all(align[k].shape == verifier[k].shape for k in tower)
    assert not any(np.array_equal(align[k], verifier[k]) for k in tower)


def test_world_encoder_gives_deterministic_unit_rows_unlike_the_judge():
    from advbench_plugins.world.generators import get_generator
    from advbench_plugins.world.metrics import embed

    encoder = _portraits().defense_encoder()
    assert isinstance(encoder, ImageEncoder)
    gen = get_generator("portraits")
    images = np.concatenate([gen.images(gen.benchmark_classes[0], 3), gen.images(gen.benchmark_classes[1], 2)])
    out = encoder.encode(images)
    assert out.dtype == np.float32 and out.shape == (5, 64)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.array_equal(out, encoder.encode(images))
    assert not np.allclose(out, embed("align", images), atol=1e-3)
    assert encoder.encode(images[:0]).shape == (0, 64)


def test_world_encoder_fingerprint_follows_the_verifier_weights(tmp_path):
    from advbench_plugins.world.metrics import judge_fingerprint

    shipped = _portraits().defense_encoder().fingerprint()
    assert len(shipped) == 64 and shipped != judge_fingerprint("align")
    for ext in ("safetensors", "json"):  # the align judge's files posing as the verifier
        shutil.copy(judges_dir() / f"align.{ext}", tmp_path / f"verifier.{ext}")
    assert _portraits(judges=str(tmp_path)).defense_encoder().fingerprint() not in (shipped, judge_fingerprint("align"))


def test_missing_verifier_is_one_line_naming_the_file_and_the_build(tmp_path):
    with pytest.raises(DataError) as err:
        _portraits(judges=str(tmp_path)).defense_encoder()
    message = str(err.value)
    assert str(tmp_path / "verifier.safetensors") in message and "advbench world build --only verifier" in message
    assert "\n" not in message


def _portraits(**params):
    from advbench_plugins.world.domains import Portraits, WorldParams

    return Portraits(WorldParams(**params))


# --------------------------------------------------------------------------------------- the runner
class FakeEncoder(ImageEncoder):
    def __init__(self, tag: str):
        self.tag = tag

    def encode(self, images):
        return np.ones((len(images), 2), np.float32) / np.sqrt(2)

    def fingerprint(self):
        return f"fake-{self.tag}"


class EncoderDomain(ToyDomain):
    """The toy domain with a defense-side encoder whose fingerprint is its ``tag``."""

    @dataclass(frozen=True)
    class Params:
        per_class: int = param(10, "images per class")
        tag: str = param("a", "the encoder's fingerprint")

    def defense_encoder(self):
        return FakeEncoder(self.params.tag)


class PlainProbe(EncoderProbe):
    uses_encoder = False


class EncoderPlugin:
    @hookimpl
    def register_domains(self, register):
        register("toy-enc", EncoderDomain)

    @hookimpl
    def register_defenses(self, register):
        register("toy-plain", PlainProbe)


@pytest.fixture
def toy(temp_plugin):
    temp_plugin(ToyPlugin(), "toy-plugin")
    temp_plugin(EncoderPlugin(), "toy-encoder-plugin")


def _protect(tmp_path, defense: str, domain: str = "toy-enc", **domain_params):
    """(info, key, key computed as before encoders existed) of the cell's protect stage."""
    from advbench.cache import StageCache
    from advbench.cells import Cell, PluginSpec
    from advbench.runner import RunOptions, _CellRun, examples_hash, protect_stage

    cell = Cell(defense=PluginSpec("defense", defense), attack=PluginSpec("attack", "no-attack"),
                domain=PluginSpec("domain", domain, domain_params), seed=0)
    cell.validate()
    run = _CellRun(cell, RunOptions(progress=False), StageCache(tmp_path / "cache"))
    protected, key = protect_stage(run)
    classes = [c for _, c in run.classes()]
    publisher = examples_hash([e for c in classes for e in run.data.publisher[c]])
    old = run.key("protect", {"defense": defense, "params": run.json["defense"]["params"], "model": run.base_id,
                              "seed": 0, "publisher": publisher,
                              "words": {"nouns": {c: run.domain.class_noun(c) for c in classes},
                                        "prompts": {c: list(run.domain.prompts(c)) for c in classes}}})
    return protected.info, key, old


def test_only_a_defense_that_uses_the_encoder_gets_it_and_is_keyed_by_it(toy, tmp_path):
    info, key, old = _protect(tmp_path, "toy-encoder")
    assert info == {"encoder": "fake-a"} and key != old
    info_b, key_b, _ = _protect(tmp_path, "toy-encoder", tag="b")
    assert info_b == {"encoder": "fake-b"} and key_b != key  # another encoder: another protect stage
    plain, plain_key, plain_old = _protect(tmp_path, "toy-plain")
    assert plain == {"encoder": None} and plain_key == plain_old  # byte-identical to the key before encoders
    assert _protect(tmp_path, "toy-plain", domain="toy")[1] == plain_key  # the domain's encoder plays no part


def test_a_defense_that_needs_an_encoder_is_refused_where_there_is_none(toy):
    from advbench.cells import Cell, PluginSpec

    cell = Cell(defense=PluginSpec("defense", "toy-encoder"), attack=PluginSpec("attack", "no-attack"),
                domain=PluginSpec("domain", "toy"), seed=0)
    with pytest.raises(UserError, match="defense 'toy-encoder' needs a defense-side image encoder and domain 'toy'"):
        cell.validate()


# ---------------------------------------------------------------------------------- the folder domain
def _folder(**params):
    from advbench_plugins.datasets.folder_domain import FolderDomain

    return FolderDomain(FolderDomain.Params(data="d", model="m", illegal=("a",), primary_metric="openclip-score",
                                            **params))


def test_folder_domain_encodes_with_a_local_open_clip_image_tower(tmp_path):
    from tests.toyworld import save_tiny_clip

    _, config, checkpoint = save_tiny_clip(tmp_path)
    assert _folder().defense_encoder() is None
    encoder = _folder(defense_encoder=checkpoint, defense_encoder_model=config).defense_encoder()
    images = (np.random.RandomState(0).rand(3, 40, 48, 3) * 255).astype(np.uint8)
    out = encoder.encode(images)
    assert out.dtype == np.float32 and out.shape == (3, 16)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5) and np.array_equal(out, encoder.encode(images))
    other = tmp_path / "other"
    other.mkdir()
    _, _, other_checkpoint = save_tiny_clip(other, seed=1)
    assert _folder(defense_encoder=other_checkpoint, defense_encoder_model=config).defense_encoder().fingerprint() \
        != encoder.fingerprint()
    with pytest.raises(DataError, match=f"defense_encoder: open_clip checkpoint {tmp_path / 'nope.st'} not found"):
        _folder(defense_encoder=str(tmp_path / "nope.st"), defense_encoder_model=config).defense_encoder()
    copy = tmp_path / "judge.safetensors"
    shutil.copy(checkpoint, copy)
    with pytest.raises(UserError, match="is the checkpoint openclip-score scores with"):
        _folder(defense_encoder=checkpoint, defense_encoder_model=config,
                metric_args=(f"openclip-score.checkpoint={copy}",)).defense_encoder()


def test_the_encoder_fingerprint_is_in_the_record_and_a_changed_encoder_makes_it_stale(toy, tmp_path, monkeypatch):
    from advbench.cells import Cell, PluginSpec
    from advbench.errors import StaleResultError
    from advbench.results import ResultStore
    from advbench.runner import RunOptions, run_cell

    def cell(defense):
        return Cell(defense=PluginSpec("defense", defense), attack=PluginSpec("attack", "no-attack"),
                    domain=PluginSpec("domain", "toy-enc"), seed=0)

    store, options = ResultStore(tmp_path / "r.jsonl"), RunOptions(progress=False, cache_dir=tmp_path / "c")
    record = run_cell(cell("toy-encoder"), store, options)
    assert record["provenance"]["defense_encoder_fingerprint"] == "fake-a"
    assert "defense_encoder_fingerprint" not in run_cell(cell("toy-plain"), store, options)["provenance"]
    assert run_cell(cell("toy-encoder"), store, options) == record  # same encoder: the finished cell is reused
    monkeypatch.setattr(FakeEncoder, "fingerprint", lambda self: "fake-retrained")
    with pytest.raises(StaleResultError, match=r"another defense encoder \(weights fake-a, now fake-retrai"):
        run_cell(cell("toy-encoder"), store, options)
    run_cell(cell("toy-plain"), store, options)  # a defense without an encoder does not care
