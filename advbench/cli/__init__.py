"""The ``advbench`` command line: one module per command, user errors become exit code 2 here only."""

from advbench.cli.main import cli, main

__all__ = ["cli", "main"]
