"""User-facing errors.

A :class:`UserError` is bad input: the CLI prints its one-line message and exits with code 2, with no
traceback. Any other exception is a programming error and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class PluginError(UserError):
    """A plugin is unknown, duplicated, of the wrong type, or failed to load."""


class ParamError(UserError):
    """A plugin parameter has a bad name, type or value."""


class DataError(UserError):
    """A dataset or model folder is missing, incomplete or corrupt."""


class ConstraintError(UserError):
    """A defense produced a fine-tuning constraint that the chosen attack cannot honour."""


class StaleResultError(UserError):
    """A results file holds a finished cell made with a different base model or metric weights."""
