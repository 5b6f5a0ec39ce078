"""Exceptions that the CLI turns into a one-line message and exit code 2 (no traceback), and the exit codes.

Exit codes of every ``spinenet`` command:

- ``EXIT_OK`` (0): everything was processed.
- ``EXIT_FAILED`` (1): the command ran but its result is negative (a data check found bad rows, a sweep trial
  failed).
- ``EXIT_USAGE`` (2): bad arguments, config or input; nothing (or nothing more) was done.
- ``EXIT_PARTIAL`` (3): a batch command processed every readable input, but some inputs failed or were
  skipped; each is listed with its reason in the command's outputs and in one summary line.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class SpinenetError(Exception):
    """Base class of every error that a user can fix by changing input or config."""


class ConfigError(SpinenetError, ValueError):
    """A config value is invalid; the message names the setting and the valid choices."""


class DataError(SpinenetError, ValueError):
    """A data file or manifest row is invalid; the message names the file or row."""
