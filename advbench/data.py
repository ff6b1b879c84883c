"""Datasets of captioned images in named classes, and the seeded publisher/attacker/reference split.

The standard on-disk form is the image folder diffusers' fine-tuning scripts read: images plus a
``metadata.jsonl`` with one JSON object per line, ``{"file_name": ..., "text": ..., "class": ...}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from advbench.errors import DataError
from advbench.interfaces import Dataset, Example

if TYPE_CHECKING:
    import torch

METADATA = "metadata.jsonl"
REQUIRED_KEYS = ("file_name", "text", "class")


class InMemoryDataset(Dataset):
    """Classes of :class:`Example` held in memory: ``InMemoryDataset({"cls": [Example, ...]})``."""

    def __init__(self, data: dict[str, list[Example]]):
        self._data = {str(cls): list(examples) for cls, examples in data.items()}

    def classes(self) -> list[str]:
        return list(self._data)

    def examples(self, cls: str) -> list[Example]:
        if cls not in self._data:
            raise DataError(f"class {cls!r} is not in the dataset; available: {', '.join(self._data) or 'none'}")
        return list(self._data[cls])


class ImageFolderDataset(InMemoryDataset):
    """An image folder with ``metadata.jsonl`` (``file_name``, ``text``, ``class``); images load lazily."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = self.folder / METADATA
        if not self.folder.is_dir():
            raise DataError(f"dataset folder {folder} does not exist; point it at a folder with images and {METADATA}")
        if not meta.exists():
            raise DataError(f"dataset folder {folder} has no {METADATA}; add one JSON line per image: "
                            f'{{"file_name": "img.png", "text": "a photo of x", "class": "x"}}')
        try:
            text = meta.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{meta} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                            "re-save it as UTF-8") from None
        data: dict[str, list[Example]] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            example = self._parse(meta, number, line)
            data.setdefault(example.cls, []).append(example)
        if not data:
            raise DataError(f"{meta} lists no images; add one JSON line per image with file_name, text and class")
        super().__init__(data)

    def _parse(self, meta: Path, number: int, line: str) -> Example:
        where = f"{meta} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object; write "
                            f'{{"file_name": ..., "text": ..., "class": ...}}')
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise DataError(f"{where} lacks {', '.join(missing)}; every line needs file_name, text and class")
        for key in REQUIRED_KEYS:
            if not isinstance(row[key], str) or (key != "text" and not row[key]):
                raise DataError(f"{where}: {key} must be a non-empty string, got {row[key]!r}")
        path = self.folder / row["file_name"]
        if not path.is_file():
            raise DataError(f"{where}: file_name {row['file_name']!r} does not exist in {self.folder}; "
                            f"add the image or remove the line")
        _verify_image(path, where)
        return Example(text=row["text"], cls=row["class"], path=str(path))


def _verify_image(path: Path, where: str) -> None:
    """Check an image's header and structure now (PIL's verify), not when a stage first reads its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{where}: image {path} is not a readable image ({reason}); replace it or remove "
                        "its line") from None


@dataclass
class DataSplit:
    """Per class: the publisher's share, the attacker's share and held-out reference images (disjoint)."""

    publisher: dict[str, list[Example]]
    attacker: dict[str, list[Example]]
    reference: dict[str, list[Example]]


def _class_seed(seed: int, cls: str) -> int:
    # Each class's shuffle depends only on (seed, class name): adding a class never changes another's split.
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{cls}".encode()).digest()[:8], "little")


def split_sizes(n: int, reference_fraction: float = 0.2, publisher_fraction: float = 0.5) -> tuple[int, int, int]:
    """(references, publisher, attacker) image counts of a class of ``n`` images (see :func:`split`)."""
    if not 0.0 < reference_fraction < 1.0:
        raise DataError(f"reference_fraction must be in (0, 1), got {reference_fraction}")
    if not 0.0 < publisher_fraction < 1.0:
        raise DataError(f"publisher_fraction must be in (0, 1), got {publisher_fraction}")
    n_ref = max(1, round(n * reference_fraction))
    rest = n - n_ref
    n_pub = min(max(1, round(rest * publisher_fraction)), rest - 1)
    return n_ref, n_pub, rest - n_pub


def split(dataset: Dataset, classes: list[str], seed: int, reference_fraction: float = 0.2,
          publisher_fraction: float = 0.5) -> DataSplit:
    """Split each class: a seeded shuffle, the reference set held out first, the rest publisher | attacker.

    With n images, ``max(1, round(n * reference_fraction))`` are references; of the remaining r,
    ``round(r * publisher_fraction)`` go to the publisher (at least one) and the rest (at least one) to the
    attacker — the FreezeAsGuard paper's 50/50 publisher/attacker protocol by default.
    """
    out = DataSplit({}, {}, {})
    for cls in classes:
        examples = dataset.examples(cls)
        n = len(examples)
        n_ref, n_pub, _ = split_sizes(n, reference_fraction, publisher_fraction)
        if n - n_ref < 2:
            raise DataError(f"class {cls!r} has only {n} image(s); the split needs at least 3 (reference, "
                            f"publisher, attacker): add images to that class")
        order = np.random.default_rng(_class_seed(seed, cls)).permutation(n)
        shuffled = [examples[i] for i in order]
        out.reference[cls] = shuffled[:n_ref]
        out.publisher[cls] = shuffled[n_ref:n_ref + n_pub]
        out.attacker[cls] = shuffled[n_ref + n_pub:]
    return out


def examples_to_array(examples: list[Example], resolution: int) -> np.ndarray:
    """Images → uint8 N×R×R×3 (shorter side resized to R, then centre-cropped, as diffusers does)."""
    from PIL import Image

    arrays = []
    for ex in examples:
        pixels = ex.pixels()
        if pixels.shape[:2] != (resolution, resolution):
            img = Image.fromarray(pixels)
            scale = resolution / min(img.size)
            size = (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale)))
            img = img.resize(size, Image.BILINEAR)
            left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
            pixels = np.asarray(img.crop((left, top, left + resolution, top + resolution)))
        arrays.append(pixels)
    if not arrays:
        return np.zeros((0, resolution, resolution, 3), dtype=np.uint8)
    return np.stack(arrays)


def examples_to_tensor(examples: list[Example], resolution: int) -> torch.Tensor:
    """Images → float32 N×3×R×R in [-1, 1] (resized and centre-cropped by :func:`examples_to_array`)."""
    import torch

    batch = torch.from_numpy(examples_to_array(examples, resolution)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def export_image_folder(dataset: Dataset, folder: str | Path, classes: list[str] | None = None) -> Path:
    """Write ``dataset`` (or some ``classes``) as PNG files plus ``metadata.jsonl``; returns the folder."""
    from PIL import Image

    folder = Path(folder)
    if (folder / METADATA).exists():
        raise DataError(f"{folder / METADATA} already exists; choose an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    index = 0
    for cls in classes if classes is not None else dataset.classes():
        for ex in dataset.examples(cls):
            name = f"{index:06d}.png"
            Image.fromarray(np.ascontiguousarray(ex.pixels())).save(folder / name)
            lines.append(json.dumps({"file_name": name, "text": ex.text, "class": cls}))
            index += 1
    tmp = folder / (METADATA + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(folder / METADATA)  # written last, so a half-exported folder has no metadata
    return folder
