"""Content-hash stage cache.

Every stage of a cell (protect, adapt, generate, score) writes its output into a folder named by a hash of
everything its output depends on. A stage is built in a temporary sibling folder and renamed into place only
when it finished, so a killed run never leaves a half-built entry and the next run rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "ADVBENCH_CACHE"
DEFAULT_DIR = ".advbench_cache"


def canonical_json(obj: Any) -> str:
    """The one canonical JSON form hashed everywhere: sorted keys, no whitespace, no NaN/inf, other objects as str."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def stable_hash(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``obj``: stage keys, cell ids and config hashes."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_DIR)


class StageCache:
    """Folders ``<root>/<stage>/<key>/`` holding finished stage outputs."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        return self.enabled and (self.path(stage, key) / ".complete").exists()

    def get_or_build(self, stage: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return ``(folder, cached)``; ``build(tmp_folder)`` writes the stage's output when it is missing."""
        final = self.path(stage, key)
        if self.has(stage, key):
            return final, True
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text(stage)
            if final.exists():  # a stale, incomplete or disabled-cache entry
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, False
