"""Thumbnail strips in result records: exact round trips, the size limit, and a tiny-world cell's record."""

import json

import numpy as np
import pytest

from advbench.results import build_record, validate_record
from advbench.thumbnails import (class_thumbnails, decode_strip, encode_strip, record_thumbnails,
                                 split_strip)


def _images(n, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def test_small_images_round_trip_pixel_for_pixel():
    images = _images(6, 32, 24)
    b64 = encode_strip(images)  # per_strip 4, max_side 64: no resize
    strip = decode_strip(b64)
    assert strip.dtype == np.uint8 and strip.shape == (32, 4 * 24, 3)
    assert np.array_equal(strip, np.concatenate(list(images[:4]), axis=1))
    parts = split_strip(b64, 4)
    assert len(parts) == 4 and all(np.array_equal(p, im) for p, im in zip(parts, images[:4]))
    # fewer images than per_strip: the strip holds what there is
    assert np.array_equal(split_strip(encode_strip(images[:2]), 2)[1], images[1])
    assert decode_strip(encode_strip(images, per_strip=1)).shape == (32, 24, 3)


def test_large_images_are_shrunk_to_max_side_all_the_same_size():
    images = _images(4, 200, 100, seed=1)
    images[1] = 255  # a white image stays white after the filter: the tiles are not mixed up
    strip = decode_strip(encode_strip(images, per_strip=4, max_side=64))
    assert strip.shape == (64, 4 * 32, 3)
    parts = split_strip(encode_strip(images, max_side=64), 4)
    assert {p.shape for p in parts} == {(64, 32, 3)}
    assert parts[1].min() >= 250 and parts[0].std() > 10
    wide = decode_strip(encode_strip(_images(3, 30, 90), max_side=45))
    assert wide.shape == (15, 3 * 45, 3)  # the longer side (width) is the limit


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32),
                                 np.zeros((0, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 4), np.uint8)])
def test_bad_arrays_are_refused(bad):
    with pytest.raises(ValueError, match="uint8 array N×H×W×3"):
        encode_strip(bad)


def test_bad_strings_and_counts_are_refused():
    with pytest.raises(ValueError, match="not a base64 PNG"):
        decode_strip("not base64 at all!")
    with pytest.raises(ValueError, match="cannot hold 3 images"):
        split_strip(encode_strip(_images(4, 8, 8)), 3)


def _record(thumbnails):
    curve = [(None, {"a": {"role": "illegal", "values": {"m": 0.5}}, "b": {"role": "legal", "values": {"m": 0.2}}})]
    cell = {"defense": {"name": "none", "params": {}, "label": "none"},
            "attack": {"name": "fullft", "params": {}, "label": "fullft"},
            "domain": {"name": "toy", "params": {}}, "model": "default:toy", "threat_model": "compliant", "seed": 0}
    return build_record(cell, curve, "m", {"m": False}, {"budget_param": None, "exact": True}, None,
                        thumbnails=thumbnails, defense_info={}, stages=[], total_seconds=1.0, provenance={},
                        started_at="t0", finished_at="t1")


def test_record_shape_is_validated_and_optional():
    images = _images(4, 8, 8)
    good = record_thumbnails({"a": class_thumbnails("illegal", "a photo", images),
                              "b": class_thumbnails("legal", "b photo", images, images)})
    record = _record(good)
    assert record["thumbnails"]["per_strip"] == 4 and record["thumbnails"]["classes"]["a"]["before"] is None
    assert "thumbnails" not in _record(None)  # older records have none, and stay valid
    assert record["thumbnails"]["classes"]["a"]["reference"] is None
    old = {**good, "classes": {c: {k: v for k, v in e.items() if k != "reference"} for c, e in good["classes"].items()}}
    validate_record({**record, "thumbnails": old})  # written before references were kept
    with_ref = class_thumbnails("illegal", "a photo", images, reference=_images(2, 8, 8))
    assert decode_strip(with_ref["reference"]).shape == (8, 16, 3)
    for broken, message in [
        ({**good, "max_side": 0}, "thumbnails.max_side"),
        ({**good, "classes": {"zzz": good["classes"]["a"]}}, "not a class"),
        ({**good, "classes": {"a": {**good["classes"]["a"], "role": "legal"}}}, "role"),
        ({**good, "classes": {"a": {**good["classes"]["a"], "after": None}}}, "after must be a base64 PNG"),
        ({**good, "classes": {"a": {**good["classes"]["a"], "before": 3}}}, "before must be"),
        ({**good, "classes": {"a": {**good["classes"]["a"], "reference": ""}}}, "reference must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_record({**record, "thumbnails": broken})


def test_a_tiny_world_cell_records_every_class(tmp_path):
    """The record carries strips of each class's generated images: `after` always (the final budget's images,
    4 wide), `before` exactly when the cell scores more than one budget; the ids and stage keys do not change."""
    from advbench.cells import Cell, PluginSpec
    from advbench.cache import StageCache
    from advbench.data import examples_to_array
    from advbench.runner import RunOptions, _CellRun, _load_images, run_cell

    domain = {"n_illegal": 1, "n_legal": 1, "steps": 2, "images_per_prompt": 2}  # 2 prompts x 2 = 4 images

    def cell(budgets):
        return Cell(PluginSpec("defense", "none"), PluginSpec("attack", "fullft", {"steps": 2, "batch_size": 2}),
                    PluginSpec("domain", "portraits", domain), budgets=budgets)

    options = RunOptions(cache_dir=tmp_path / "cache", progress=False)
    built = PluginSpec("domain", "portraits", domain).build()
    prompts = {c: list(built.prompts(c)) for c in built.illegal_classes() + built.legal_classes()}
    curve, single = run_cell(cell((1, 2)), None, options), run_cell(cell((2,)), None, options)
    for record, has_before in ((curve, True), (single, False)):
        thumbs = json.loads(json.dumps(record["thumbnails"]))  # plain JSON
        assert set(thumbs["classes"]) == set(record["metrics"]["classes"]) and len(thumbs["classes"]) == 2
        generate = {(s["class"], s.get("budget")): s["key"] for s in record["stages"] if s["stage"] == "generate"}
        for cls, entry in thumbs["classes"].items():
            assert entry["role"] == record["metrics"]["classes"][cls]["role"]
            final = _load_images(tmp_path / "cache" / "generate" / generate[(cls, 2)])[0]
            assert final.shape == (4, 32, 32, 3)
            strip = decode_strip(entry["after"])
            assert strip.shape == (32, 4 * 32, 3)
            assert np.array_equal(strip, np.concatenate(list(final), axis=1))  # 32 px: kept pixel for pixel
            assert entry["prompt"] == prompts[cls][0] and cls in entry["prompt"]  # its first evaluation prompt
            assert (entry["before"] is not None) == has_before
            # the class's held-out references (the run's own data split), what a reader compares the images with
            run = _CellRun(cell((2,)), options, StageCache(tmp_path / "cache"))
            references = examples_to_array(run.data.reference[cls][:4], 32)
            assert np.array_equal(decode_strip(entry["reference"]), np.concatenate(list(references), axis=1))
            if has_before:
                start = _load_images(tmp_path / "cache" / "generate" / generate[(cls, 0)])[0]
                assert np.array_equal(decode_strip(entry["before"]), np.concatenate(list(start[:4]), axis=1))
    # outputs only: the one-budget cell took its final adapt/generate/score stages from the curve's run
    assert all(s["cached"] for s in single["stages"])
