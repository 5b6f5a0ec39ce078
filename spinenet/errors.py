"""Exceptions that the CLI turns into a one-line message and exit code 2 (no traceback)."""


class SpinenetError(Exception):
    """Base class of every error that a user can fix by changing input or config."""


class ConfigError(SpinenetError, ValueError):
    """A config value is invalid; the message names the setting and the valid choices."""


class DataError(SpinenetError, ValueError):
    """A data file or manifest row is invalid; the message names the file or row."""
