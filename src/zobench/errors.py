"""Errors caused by the user's input (config, data, checkpoint), reported as one line, exit 2.

Everything else is a bug in zobench or a dependency and keeps its traceback.
"""


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what is allowed."""


class DataNotFoundError(ConfigError, FileNotFoundError):
    """A data file the config points at does not exist."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read, or that belongs to a different config."""


class MissingPackageError(ConfigError, ModuleNotFoundError):
    """A package the chosen config needs is not installed; the message says how to install it."""


class ConfigErrors(ConfigError):
    """Several bad keys of one config, found in one pass: one line each (``lines``), joined by
    newlines in the message; the command line prints each as its own ``zobench: error:`` line."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)
