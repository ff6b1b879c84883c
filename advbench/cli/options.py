"""Options shared by ``run``, ``bench`` and ``search``: results and caches, device/precision, added metrics, the
worst-case search."""

from __future__ import annotations

import click

from advbench.errors import UserError


def execution_options(func):
    """--cache-dir, --no-cache, --device, --mixed-precision, --threads, --quiet."""
    decorators = [
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Stage cache folder (default: $ADVBENCH_CACHE or .advbench_cache)."),
        click.option("--no-cache", is_flag=True, help="Recompute every stage (results are still appended)."),
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N, mps, or auto (cuda when available)."),
        click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no",
                     show_default=True, help="Mixed precision for fine-tuning (accelerate)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="torch CPU threads for this process (default: torch's choice, usually all cores)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def metric_option(func):
    """--metric NAME[:KEY=VALUE,...], repeatable: a metric plugin scored besides the domain's own."""
    return click.option(
        "--metric", "metric_args", multiple=True, metavar="NAME[:K=V,...]",
        help="Also score this metric plugin (see `advbench list`), with its own parameters, e.g. "
             "--metric example-brightness or --metric clean-kid:num_subsets=50; repeatable. Part of the cell.")(func)


def parse_metrics(items: tuple[str, ...] | list[str]) -> tuple:
    """The ``--metric`` values as metric PluginSpecs (names are checked when the cell is validated)."""
    from advbench.cells import metric_spec

    return tuple(metric_spec(item, "--metric") for item in items)


def resolve_device(device: str) -> str:
    """``auto`` → cuda if torch sees a GPU, else cpu; a named GPU that is absent is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was requested but torch sees no CUDA GPU; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was requested but MPS is not available; use --device cpu")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:N, mps or auto")
    return device


def run_options(cache_dir, no_cache, device, quiet, threads=None, **extra):
    """RunOptions of the execution options (``--mixed-precision`` goes into the cell: it changes the numbers);
    ``--threads`` is set on torch here, for the whole process."""
    from advbench.runner import RunOptions

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return RunOptions(cache_dir=cache_dir, use_cache=not no_cache, device=resolve_device(device),
                      progress=not quiet, **extra)


def adversary_options(required: bool = False, reporting: bool = True):
    """--adversaries SUITE.toml, --selection-seed, --keep: the worst-case search (advbench.worstcase); with
    ``reporting`` (run, bench: the winner is reported) also --keep-search-snapshots, which goes to RunOptions."""
    def wrap(func):
        decorators = [
            click.option("--adversaries", "suite_path", required=required, default=None,
                         type=click.Path(dir_okay=False),
                         help="Adversary suite TOML (e.g. benchmarks/adversaries/standard.toml): search it for the "
                              "strongest adversary against the defense and against no defense, then report it."),
            click.option("--selection-seed", type=click.IntRange(min=10_000, max=2**32 - 1), default=10_000,
                         show_default=True,
                         help="Seed of the search's cells; reported seeds stay below 10000 (no winner's curse)."),
            click.option("--keep", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.5,
                         show_default=True, help="Share of the adversaries that go on to the next rung."),
        ]
        if reporting:
            decorators.append(click.option(
                "--keep-search-snapshots", is_flag=True,
                help="Keep the losing adversaries' training snapshots in the cache (by default they are removed "
                     "once the winner's cells are in the results file; their images and scores stay)."))
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return wrap
