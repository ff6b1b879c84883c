"""Executors: where the cells of a grid run. ``local`` runs them one after another in this process; ``ray`` runs
each cell as a Ray task on a local Ray instance or a cluster (``pip install "advbench[ray]"``).

One code path decides which cells run and stores their records (:func:`run_grid`): a cell whose record is already
in the results file (or pending) is skipped after the same staleness check as ever (:func:`advbench.runner.run_cell`
with the store returns the stored record), and every new record is appended here, by the driver, through
:meth:`advbench.results.ResultStore.append` (atomic; a record already there is not added twice). An executor only
turns cells into records: :func:`advbench.runner.run_cell` without a store, in this process or on a Ray worker.

On Ray every worker validates its cell again (it reads the model folder, images and metric weights at the same
paths, so a node that does not see them fails with the usual one-line error), writes stages to the same stage
cache (an absolute path: on several nodes it must be a shared filesystem), and a worker that dies mid-cell is
retried (``max_retries``); the half-built stage it leaves is cleaned up by the cache. Plugins registered at run
time in the driver (:func:`advbench.plugins.register_plugin`) are registered on the workers too (their module must
be importable there), and ``ADVBENCH_PLUGINS`` is forwarded. See ``docs/cluster.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from advbench.errors import UserError

EXECUTORS = ("local", "ray")
RAY_KEYS = {"num_cpus": "CPUs per cell", "num_gpus": "GPUs per cell (fractions share a GPU)",
            "max_retries": "retries of a cell whose worker or node died"}
RAY_INSTALL = 'pip install "advbench[ray]"'
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

Job = tuple[int, Any]  # (index of the cell in the grid, the cell)
Report = Callable[[int, Any, "dict[str, Any] | None", str], None]  # (index, cell, record or None, status)


@dataclass
class RayConfig:
    """How cells run on Ray: the cluster (None: start a local instance) and each cell's resources."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3

    def __post_init__(self):
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"{key} must be a number >= 0 ({RAY_KEYS[key]}), got {value!r}")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise UserError("a cell needs some resource on Ray: set num_cpus or num_gpus above 0")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UserError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")


def check_ray_table(table: Any, where: str) -> dict[str, Any]:
    """The ``[ray]`` table of a bench spec (per-cell resources), checked; an unknown key names the allowed ones."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: ray must be a table, e.g. [ray] with num_gpus = 1")
    for key in table:
        if key not in RAY_KEYS:
            raise UserError(f"{where}: [ray] has no key '{key}'; allowed: {', '.join(RAY_KEYS)}")
    try:
        RayConfig(**table)
    except UserError as exc:
        raise UserError(f"{where}: [ray] {exc}") from None
    return dict(table)


# ------------------------------------------------------------------------------------------ the one grid loop
def run_grid(cells: list, ids: list[str], store, options, executor, report: Report) -> None:
    """Run the cells not yet in ``store`` on ``executor`` and append their records; report every cell's state.

    Finished cells are reported first (checked as stale exactly as :func:`~advbench.runner.run_cell` does). The
    executor pulls the others lazily, so a cell another shard finished in the meantime is skipped when pulled.
    """
    from advbench.runner import run_cell

    def skip(index: int) -> None:
        report(index, cells[index], run_cell(cells[index], store, options), "skipped (done)")

    done = store.finished_ids()
    todo = []
    for index, cid in enumerate(ids):
        if cid in done:
            skip(index)
        else:
            todo.append(index)

    def jobs() -> Iterator[Job]:
        for number, index in enumerate(todo, 1):
            if store.has(ids[index]):
                skip(index)
                continue
            report(index, cells[index], None, executor.running_text(number, len(todo)))
            yield index, cells[index]

    for index, record in executor.run(jobs(), options):
        if record["cell_id"] != ids[index]:
            raise UserError(f"cell {cells[index].describe()} came back with id {record['cell_id']}, not "
                            f"{ids[index]}: its worker resolved other plugin parameters; install the same advbench "
                            "and plugin versions on every node")
        store.append(record)
        report(index, cells[index], record, "done")


class LocalExecutor:
    """Cells one after another in this process."""

    name = "local"

    def device(self, device: str) -> str:
        from advbench.cli.options import resolve_device

        return resolve_device(device)

    def running_text(self, number: int, total: int) -> str:
        return f"running ({number}/{total})"

    def start(self) -> None:
        pass

    def run(self, jobs: Iterable[Job], options) -> Iterator[tuple[int, dict[str, Any]]]:
        from advbench.runner import run_cell

        for index, cell in jobs:
            yield index, run_cell(cell, None, options)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------------- Ray
def start_ray(address: str | None = None, **local: Any) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local instance (``local``: ``ray.init`` arguments such
    as ``num_cpus``); return whether this call started or connected (False: Ray was already initialised)."""
    import logging

    ray = import_ray(address)
    if ray.is_initialized():
        return False
    # "local": a new instance even when this node belongs to a running cluster (Ray would otherwise join it)
    kwargs = {"address": address} if address else {"address": "local", "include_dashboard": False, **local}
    try:
        ray.init(**kwargs, logging_level=logging.WARNING)
    except Exception as exc:  # ConnectionError, AuthenticationError, ValueError of a bad address...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or reach {where}: {first}; check --address (auto, HOST:PORT or "
                        "ray://HOST:10001) and that RAY_AUTH_TOKEN holds the cluster's token "
                        "(docs/cluster.md)") from None
    return True


def import_ray(address: str | None = None):
    """``ray``, imported after its authentication is set up (a one-line error names the extra when it is missing).

    A local instance (no ``address``) gets token authentication with a fresh token held in this process's
    environment only (``RAY_AUTH_TOKEN``, inherited by the instance's processes), so nothing is written under the
    user's home; an explicit ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` is respected. A cluster is
    reached with the user's own token (Ray reads those variables, else ``~/.ray/auth_token``).
    """
    import sys

    fresh = address is None and not any(os.environ.get(k) for k in AUTH_VARS)
    if fresh:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    loaded = sys.modules.get("ray") is not None
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    if fresh and loaded:  # Ray read the mode when it was imported; refresh it as ray.init itself does
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    return ray


class RayExecutor:
    """Each cell a Ray task with ``num_cpus``/``num_gpus``; records come back to the driver."""

    name = "ray"

    def __init__(self, config: RayConfig, threads: int | None = None):
        self.config, self.threads = config, threads
        self.ray = import_ray(config.address)  # fails before any work when Ray is missing
        self._started = False

    def device(self, device: str) -> str:
        """The device each worker uses: Ray hands a cell its GPUs (``CUDA_VISIBLE_DEVICES``), so ``auto`` means cuda
        exactly when a cell gets a GPU, whatever the driver's machine has."""
        gpus = self.config.num_gpus
        if device == "auto":
            return "cuda" if gpus > 0 else "cpu"
        if device == "cuda" and gpus <= 0:
            raise UserError("--device cuda on Ray needs a GPU per cell: pass --num-gpus 1 (or num_gpus in the "
                            "spec's [ray] table)")
        if device.startswith("cuda:"):
            raise UserError(f"--device {device} cannot pick a GPU on Ray (Ray assigns each cell its GPUs); "
                            "write --device cuda")
        if device != "cpu" and device != "cuda":
            raise UserError(f"--device {device} is not available with --executor ray; use cpu, cuda or auto")
        return device

    def running_text(self, number: int, total: int) -> str:
        return "queued or running on ray"

    def start(self) -> None:
        """Start the local instance or connect to the cluster (a no-op once Ray is initialised)."""
        self._started = start_ray(self.config.address) or self._started

    def run(self, jobs: Iterable[Job], options) -> Iterator[tuple[int, dict[str, Any]]]:
        ray, config = self.ray, self.config
        self.start()
        task = ray.remote(_ray_cell).options(num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                                             max_retries=config.max_retries, retry_exceptions=False)
        # every worker sees the same absolute cache folder; nothing is reported back while a cell runs
        options = dataclasses.replace(options, cache_dir=str(_cache_root(options.cache_dir)), progress=False,
                                      on_stage=None)
        shared = {"options": options, "plugins": _runtime_plugins(), "threads": self.threads,
                  "num_cpus": config.num_cpus, "allow": os.environ.get("ADVBENCH_PLUGINS"), "cwd": os.getcwd()}
        try:  # Ray serializes the plugin objects with the rest; a plugin it cannot send fails here, in one line
            shared = ray.put(shared)
        except Exception as exc:
            raise UserError(f"the plugins registered at run time here ({', '.join(n for n, _ in shared['plugins'])}) "
                            f"cannot be sent to Ray workers ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); install them "
                            "as packages with an advbench entry point instead (docs/plugins.md)") from None
        refs = {task.remote(_portable(cell), shared): (index, cell) for index, cell in jobs}
        failures: list[tuple[Any, BaseException]] = []
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                index, cell = refs.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    failures.append((cell, exc))  # the other cells still finish and are stored
                    continue
                yield index, record
        finally:
            for ref in refs:  # only when the driver stops early (e.g. the results disk is full)
                ray.cancel(ref)
        if failures:
            raise self._failure(*failures[0], len(failures))

    def _failure(self, cell, exc: BaseException, count: int) -> BaseException:
        others = f" ({count - 1} other cells failed too; a rerun retries them)" if count > 1 else ""
        cause = getattr(exc, "cause", None)
        if isinstance(exc, self.ray.exceptions.RayTaskError):
            if isinstance(cause, UserError):
                return UserError(f"cell {cell.describe()}: {cause}{others}")
            return exc  # a bug: keep the worker's traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        return UserError(f"cell {cell.describe()} was lost after {self.config.max_retries} retries "
                         f"({type(exc).__name__}: {first}); a worker or node died (out of memory?), see `ray logs`"
                         f"{others}")

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(name: str, config: RayConfig | None = None, threads: int | None = None):
    if name == "ray":
        return RayExecutor(config or RayConfig(), threads)
    return LocalExecutor()


# ------------------------------------------------------------------------------------------ on a Ray worker
def _cache_root(cache_dir) -> Path:
    from advbench.cache import default_cache_dir

    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()


def _portable(cell):
    """The cell without its built plugins (configured objects that may hold models): the worker builds its own."""
    light = copy.copy(cell)
    for name in ("defense", "attack", "domain"):
        spec = copy.copy(getattr(cell, name))
        spec._built = None
        setattr(light, name, spec)
    light.metrics = tuple(copy.copy(spec) for spec in cell.metrics)  # added metrics (--metric) likewise
    for spec in light.metrics:
        spec._built = None
    return light


def _runtime_plugins() -> list[tuple[str, Any]]:
    """The plugin objects registered at run time in this process (not through entry points): Ray sends them to
    the workers as task data (advbench itself never pickles or unpickles anything)."""
    import importlib.metadata

    from advbench import plugins

    from_entry_points = {f"{ep.dist.name if ep.dist else ep.name}:{ep.name}"
                         for ep in importlib.metadata.entry_points(group=plugins.GROUP)}
    return [(name, obj) for name, obj in plugins.get_plugin_manager().list_name_plugin()
            if obj is not None and name not in from_entry_points]


def _setup_worker(shared: dict[str, Any]) -> None:
    """Make this worker's folder, plugins and threads those of the driver (a worker runs many cells; idempotent).

    The driver's working folder: a spec's relative paths (data, model) are read from there, as they are locally.
    """
    from advbench import plugins

    try:
        os.chdir(shared["cwd"])
    except OSError:
        raise UserError(f"the folder the bench runs from, {shared['cwd']}, is not on Ray node {os.uname().nodename}; "
                        "run it from a shared filesystem that every node mounts at the same path "
                        "(docs/cluster.md)") from None

    allow = shared["allow"]
    if os.environ.get(plugins.ALLOW_ENV) != allow:
        if allow is None:
            os.environ.pop(plugins.ALLOW_ENV, None)
        else:
            os.environ[plugins.ALLOW_ENV] = allow
        plugins.reset()
    pm = plugins.get_plugin_manager()
    added = False
    for name, obj in shared["plugins"]:
        if pm.get_plugin(name) is None:
            pm.register(obj, name=name)
            added = True
    if added:
        plugins.reset_registries()
    import torch

    torch.set_num_threads(shared["threads"] or max(1, math.floor(shared["num_cpus"])))


def _ray_cell(cell, shared: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: one cell's record (stored by the driver)."""
    from advbench.runner import run_cell

    _setup_worker(shared)
    return run_cell(cell, None, shared["options"])
