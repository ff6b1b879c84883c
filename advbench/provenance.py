"""Provenance of a result record: where and with what it was produced (versions, git state, machine, device).

Recorded in every record's ``provenance`` (documented key by key in ``docs/results-schema.md``); what of it
changes numbers is compared by :mod:`advbench.numerics`. This module never imports torch: package versions
come from ``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree holding ``folder``.

    Defaults to the folder advbench is imported from; not a repository (or no git) gives ``None`` values.
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], folder)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` from package metadata (nothing is imported); None when absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``; "" if unknown).
    Two CPUs of one platform string can train an exposed base to other weights (docs/results.md §5)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance(device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and with what a record was produced.

    ``extra`` is merged in last; the runner passes ``torch_threads`` and ``torch_cpu_capability`` (this module
    does not import torch) and
    ``plugins`` (for each plugin of the cell, the entry point and the version of the distribution providing it).
    """
    from advbench import __version__

    git = git_state()
    info: dict[str, Any] = {
        "advbench_version": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "plugins": {},
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "device": device,
    }
    info.update(extra or {})
    return info

