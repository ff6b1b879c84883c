"""The standard on-disk dataset: an image folder with ``metadata.jsonl`` (``file_name``, ``text``, ``class``)."""

from __future__ import annotations

from dataclasses import dataclass

from advbench.interfaces import DatasetSource
from advbench.params import check, param


class ImageFolderSource(DatasetSource):
    """Loads captioned images grouped by class from a folder with metadata.jsonl."""

    @dataclass(frozen=True)
    class Params:
        path: str = param("", "Folder holding the images and metadata.jsonl.", path=True)

        def __post_init__(self):
            check(bool(self.path), "path is required: the folder with metadata.jsonl, e.g. path=data/portraits")

    def load(self):
        from advbench.data import ImageFolderDataset

        return ImageFolderDataset(self.params.path)
