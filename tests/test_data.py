"""Datasets: in-memory and image-folder datasets, the seeded split, tensors, export."""

import json

import numpy as np
import pytest

from advbench.data import (ImageFolderDataset, InMemoryDataset, examples_to_tensor, export_image_folder,
                           split)
from advbench.errors import DataError, UserError
from advbench.interfaces import Example
from advbench.testing import tiny_dataset


def _ids(examples):
    return [id(e) for e in examples]


def test_tiny_dataset_is_deterministic_and_class_distinct():
    a, b = tiny_dataset(n_classes=3, n_per_class=4, seed=1), tiny_dataset(n_classes=3, n_per_class=4, seed=1)
    assert a.classes() == ["class_0", "class_1", "class_2"]
    first = a.examples("class_0")[0]
    assert first.text == "a photo of class_0" and first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.examples("class_1"), b.examples("class_1")))
    means = [np.mean([e.image.reshape(-1, 3).mean(0) for e in a.examples(c)], axis=0) for c in a.classes()]
    assert min(np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i)) > 20


def test_unknown_class_is_a_data_error():
    with pytest.raises(DataError, match="available: class_0"):
        tiny_dataset(n_classes=1).examples("nope")


def test_split_is_disjoint_complete_and_reproducible():
    ds = tiny_dataset(n_classes=3, n_per_class=10)
    s = split(ds, ["class_0", "class_2"], seed=3)
    for cls in ("class_0", "class_2"):
        parts = [_ids(s.reference[cls]), _ids(s.publisher[cls]), _ids(s.attacker[cls])]
        assert [len(p) for p in parts] == [2, 4, 4]
        assert sorted(sum(parts, [])) == sorted(_ids(ds.examples(cls)))
    assert "class_1" not in s.publisher
    again = split(ds, ["class_0", "class_2"], seed=3)
    assert _ids(again.attacker["class_0"]) == _ids(s.attacker["class_0"])
    other = split(ds, ["class_0", "class_2"], seed=4)
    assert _ids(other.attacker["class_0"]) != _ids(s.attacker["class_0"])


def test_split_of_a_class_does_not_depend_on_the_other_classes():
    ds = tiny_dataset(n_classes=3, n_per_class=9)
    alone = split(ds, ["class_1"], seed=0)
    together = split(ds, ["class_0", "class_1", "class_2"], seed=0)
    assert _ids(alone.reference["class_1"]) == _ids(together.reference["class_1"])
    assert _ids(alone.publisher["class_1"]) == _ids(together.publisher["class_1"])


def test_split_fractions_and_too_few_images():
    ds = tiny_dataset(n_classes=1, n_per_class=20)
    s = split(ds, ["class_0"], seed=0, reference_fraction=0.25, publisher_fraction=0.6)
    assert (len(s.reference["class_0"]), len(s.publisher["class_0"]), len(s.attacker["class_0"])) == (5, 9, 6)
    three = split(tiny_dataset(n_classes=1, n_per_class=3), ["class_0"], seed=0)
    assert [len(p["class_0"]) for p in (three.reference, three.publisher, three.attacker)] == [1, 1, 1]
    with pytest.raises(DataError, match="only 2 image"):
        split(tiny_dataset(n_classes=1, n_per_class=2), ["class_0"], seed=0)
    with pytest.raises(DataError, match="reference_fraction"):
        split(ds, ["class_0"], seed=0, reference_fraction=1.0)
    with pytest.raises(DataError, match="not in the dataset"):
        split(ds, ["class_9"], seed=0)


def test_export_and_load_image_folder_round_trip(tmp_path):
    ds = tiny_dataset(n_classes=2, n_per_class=3)
    folder = export_image_folder(ds, tmp_path / "data")
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 6 and set(json.loads(lines[0])) == {"file_name", "text", "class"}
    loaded = ImageFolderDataset(folder)
    assert loaded.classes() == ds.classes()
    for cls in ds.classes():
        for a, b in zip(ds.examples(cls), loaded.examples(cls)):
            assert a.text == b.text and b.image is None  # loaded lazily
            assert np.array_equal(a.image, b.pixels())
    with pytest.raises(DataError, match="already exists"):
        export_image_folder(ds, folder)


def _folder(tmp_path, lines, files=("a.png",)):
    from PIL import Image

    tmp_path.mkdir(exist_ok=True)
    for name in files:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


GOOD = json.dumps({"file_name": "a.png", "text": "a photo of x", "class": "x"})


@pytest.mark.parametrize("lines, message", [
    ([GOOD, "{not json"], r"line 2 is not valid JSON"),
    ([GOOD, "", json.dumps({"file_name": "a.png", "class": "x"})], r"line 3 lacks text"),
    ([json.dumps({"file_name": "b.png", "text": "t", "class": "x"})], r"line 1: file_name 'b.png' does not exist"),
    ([json.dumps({"file_name": "a.png", "text": "t", "class": 3})], r"line 1: class must be a non-empty string"),
    ([json.dumps(["a.png"])], r"line 1 is not a JSON object"),
    ([""], r"lists no images"),
])
def test_bad_metadata_is_one_line_data_error(tmp_path, lines, message):
    with pytest.raises(DataError, match=message) as info:
        ImageFolderDataset(_folder(tmp_path / "d", lines))
    assert "\n" not in str(info.value)


def test_missing_folder_or_metadata(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no metadata.jsonl"):
        ImageFolderDataset(tmp_path / "empty")


def test_examples_to_tensor_range_and_resize():
    ds = tiny_dataset(n_classes=1, n_per_class=2)
    x = examples_to_tensor(ds.examples("class_0"), 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype.is_floating_point
    assert x.min() >= -1 and x.max() <= 1
    assert np.allclose(((x[0].permute(1, 2, 0).numpy() + 1) * 127.5), ds.examples("class_0")[0].image, atol=1e-3)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 18:22] = 255  # a bright vertical bar in the middle survives resize + centre crop
    y = examples_to_tensor([Example("t", "c", image=wide)], 16)
    assert y.shape == (1, 3, 16, 16)
    assert y[0, :, :, 7:9].mean() > 0.5 and y[0, :, :, :3].mean() == -1


def test_in_memory_dataset_keeps_insertion_order():
    ds = InMemoryDataset({"b": [Example("t", "b", image=np.zeros((4, 4, 3), np.uint8))], "a": []})
    assert ds.classes() == ["b", "a"] and ds.examples("a") == []
