"""Validation before work: everything a cell will read or write is checked before its first stage runs.

:func:`check_cell` (called by :meth:`advbench.cells.Cell.validate`, so by ``run``, ``bench`` and ``load_spec``
for every cell of a grid) refuses a defense that needs a defense-side image encoder on a domain that supplies
none, resolves every metric the domain names, asks each metric whether it can judge that domain, checks the
model folder's layout, loads the dataset (an image folder verifies every image and its metadata's encoding as
it loads) and checks that every class is large enough for the split and for every metric, the cell's added
metrics (``--metric``, :func:`added_metrics`) included.
:func:`check_output_dir` and :func:`check_output_file` check, without leaving anything behind, that a place the
run will write to is a writable folder or can be created. Every failure is a one-line
:class:`~advbench.errors.UserError`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advbench.cache import stable_hash
from advbench.errors import DataError, UserError

if TYPE_CHECKING:
    from advbench.cells import Cell

_CHECKED: set[str] = set()  # (domain, its params, model) already checked in this process


def check_cell(cell: Cell) -> None:
    """Check the cell's metrics, model folder, data and class sizes (once per domain and model per process)."""
    defense = cell.defense.build()
    for plugin in (defense, cell.attack.build()):
        check_input_paths(plugin)
    if defense.uses_encoder:  # depends on the defense, so outside the once-per-domain checks below
        check_defense_encoder(defense, cell.domain.build())
    added = [[spec.name, spec.resolved_params()] for spec in cell.metrics]
    key = stable_hash([cell.domain.name, cell.domain.resolved_params(), cell.model, *([added] if added else [])])
    if key in _CHECKED:
        return
    domain = cell.domain.build()
    metrics = {**domain_metrics(domain), **added_metrics(domain, cell.metrics)}
    for plugin in (domain, *metrics.values()):
        check_input_paths(plugin)
    folder = cell.model or domain.model_folder()
    if folder:
        from advbench.model import check_folder

        check_folder(folder)
    check_class_sizes(domain, metrics)
    _CHECKED.add(key)


def check_defense_encoder(defense: Any, domain: Any) -> None:
    """A defense with ``uses_encoder`` runs only on a domain whose ``defense_encoder()`` supplies one (building it
    also checks its files); the fix names the domain's ``defense_encoder`` parameter when it has one."""
    if domain.defense_encoder() is not None:
        return
    if "defense_encoder" in getattr(domain.params, "__dataclass_fields__", {}):
        fix = (f"set --domain-arg defense_encoder=PATH (a local image-encoder checkpoint other than the judges'; "
               f"see advbench show domain {domain.name})")
    else:
        fix = "run it on a domain that supplies one (the tiny world's portraits, artworks, explicit)"
    raise UserError(f"defense '{defense.name}' needs a defense-side image encoder and domain '{domain.name}' "
                    f"supplies none; {fix}")


def domain_metrics(domain: Any) -> dict[str, Any]:
    """The domain's primary and extra metrics, built with its parameters, each able to judge the domain."""
    from advbench.cells import PluginSpec

    if not domain.primary_metric:
        raise UserError(f"domain '{domain.name}' names no primary metric; set primary_metric")
    names = [domain.primary_metric, *[m for m in domain.extra_metrics if m != domain.primary_metric]]
    metrics = {}
    for name in names:
        metric = PluginSpec("metric", name, domain.metric_params(name)).build()
        problem = metric.check_domain(domain)
        if problem:
            raise UserError(f"metric '{name}' cannot judge domain '{domain.name}': {problem}")
        metrics[name] = metric
    return metrics


def added_metrics(domain: Any, specs: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """A cell's added metrics (``--metric``), built with their own parameters: each a registered metric (else the
    registry's "Did you mean" line), not one the domain already scores, and able to judge the domain."""
    own = [domain.primary_metric, *domain.extra_metrics]
    metrics = {}
    for spec in specs:
        metric = spec.build()
        if spec.name in own:
            raise UserError(f"metric '{spec.name}' is already scored by domain '{domain.name}' (its metrics: "
                            f"{', '.join(dict.fromkeys(own))}); add only metrics the domain does not score")
        problem = metric.check_domain(domain)
        if problem:
            raise UserError(f"metric '{spec.name}' cannot judge domain '{domain.name}': {problem}")
        metrics[spec.name] = metric
    return metrics


def check_class_sizes(domain: Any, metrics: dict[str, Any]) -> None:
    """Every class exists and has enough images for the split and for every metric's reference set; the
    evaluation yields enough generated images per class for every metric."""
    from advbench.data import split_sizes

    dataset = domain.dataset()
    classes = [*domain.illegal_classes(), *domain.legal_classes()]
    known = set(dataset.classes())
    missing = [c for c in classes if c not in known]
    if missing:
        raise DataError(f"domain '{domain.name}': classes {', '.join(map(repr, missing))} are not in its dataset; "
                        f"available: {', '.join(sorted(known)) or 'none'}")
    refs_needed = max([m.min_references for m in metrics.values() if m.needs_references] or [1])
    need = minimum_class_size(refs_needed)
    for cls in classes:
        n = len(dataset.examples(cls))
        if n < need:
            n_ref = split_sizes(n)[0]
            by = next((name for name, m in metrics.items() if m.needs_references and m.min_references > n_ref),
                      None)
            why = (f"metric '{by}' needs {refs_needed} held-out reference images and 20% of {n} is {n_ref}" if by
                   else "the split needs reference, publisher and attacker images")
            raise DataError(f"domain '{domain.name}': class {cls!r} has {n} image(s), fewer than the {need} it needs "
                            f"({why}); add images to that class")
    per_class = _generated_per_class(domain, classes[0])
    for name, metric in metrics.items():
        if per_class < metric.min_images:
            raise UserError(f"domain '{domain.name}': metric '{name}' needs at least {metric.min_images} generated "
                            f"images per class, the evaluation makes {per_class}; raise images_per_prompt")


def minimum_class_size(references: int) -> int:
    """The fewest images a class needs for ``references`` held-out images plus a publisher and attacker image."""
    from advbench.data import split_sizes

    n = 3
    while True:
        n_ref = split_sizes(n)[0]
        if n_ref >= references and n - n_ref >= 2:
            return n
        n += 1


def _generated_per_class(domain: Any, cls: str) -> int:
    from advbench.sampling import SamplingConfig

    return len(list(domain.prompts(cls))) * SamplingConfig(**domain.sampling()).images_per_prompt


def path_params(params: Any) -> dict[str, str]:
    """The non-empty parameters declared with ``param(..., path=True)``: files or folders the plugin reads."""
    import dataclasses

    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
            if f.metadata.get("path") and getattr(params, f.name)}


def check_input_paths(plugin: Any) -> None:
    """Every path parameter of ``plugin`` names something that exists (``hf:`` hub ids are checked on load)."""
    kind = _kind(plugin)
    for name, value in path_params(plugin.params).items():
        if str(value).startswith("hf:"):
            continue
        if not Path(value).expanduser().exists():
            raise DataError(f"{kind} '{plugin.name}': parameter {name}={value} does not exist; put the file or "
                            f"folder there or pass its path (see advbench show {kind} {plugin.name})")


def _kind(plugin: Any) -> str:
    from advbench import interfaces

    for kind in ("Defense", "Attack", "Domain", "Metric", "DatasetSource"):
        if isinstance(plugin, getattr(interfaces, kind)):
            return "dataset" if kind == "DatasetSource" else kind.lower()
    return "plugin"


def check_spec_path(value: str, where: str, root: Path | None = None) -> None:
    """A relative path read from a spec stays inside the folder advbench runs from (``root``); absolute paths
    are taken as written (docs/bench-specs.md, "Paths")."""
    if not value or value.startswith("hf:") or Path(value).expanduser().is_absolute():
        return
    root = (root or Path.cwd()).resolve()
    target = (root / value).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"{where}: relative path {value!r} leads outside {root}; write it inside that folder or "
                        "as an absolute path")


# ------------------------------------------------------------------------------------------ outputs
def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, what: str, hint: str) -> None:
    """A folder is writable when a file can be created in it (os.access alone is wrong for root and read-only
    mounts); the probe file is removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".advbench-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} cannot be written: {folder} is not writable ({exc.strerror}); {hint}") from None


def check_output_dir(path: str | Path, what: str, hint: str) -> None:
    """``path`` is a writable folder, or one that can be created (nothing is created)."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder; {hint}")
        _probe(path, f"{what} {path}", hint)
        return
    parent = _first_existing(path)
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a folder; {hint}")
    _probe(parent, f"{what} {path}", hint)


def check_output_file(path: str | Path, what: str, hint: str) -> None:
    """``path`` is a file that can be replaced atomically (its folder writable), or one that can be created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; {hint}")
    if path.exists() and not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} is not readable; {hint}")
    check_output_dir(path.parent if str(path.parent) else Path("."), f"the folder of {what}", hint)


def check_run_outputs(results: str | Path | None, cache_dir: str | Path | None, use_cache: bool) -> None:
    """The results file and the stage cache of a run or bench (``--cache-dir``, else ``ADVBENCH_CACHE``)."""
    from advbench.cache import CACHE_ENV, default_cache_dir

    if results is not None:
        check_output_file(results, "results file", "pass a writable .jsonl path with --results")
    if use_cache:
        where = "--cache-dir" if cache_dir is not None else (f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else
                                                             "the default cache folder")
        check_output_dir(cache_dir if cache_dir is not None else default_cache_dir(), f"stage cache ({where})",
                         f"point --cache-dir or {CACHE_ENV} at a writable folder")


def check_tolerance(value: float) -> None:
    import math

    if not math.isfinite(value) or value < 0:
        raise UserError(f"--tolerance must be a finite number >= 0, got {value!r}")
