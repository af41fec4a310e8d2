"""The framework's own error types: the command-line tools turn these (and only these) into one ``error:`` line.

Anything else is a bug and keeps its traceback (``--debug`` shows the traceback of these too).
"""
from __future__ import annotations


class FrameworkError(Exception):
    """Bad input the user can fix; the message names the key, file or device and the fix."""


class ConfigError(FrameworkError, ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key and the fix."""


class CheckpointError(FrameworkError, RuntimeError):
    """A checkpoint is missing, truncated, foreign or does not fit the model; the message says what to do."""


class DataError(FrameworkError, ValueError):
    """Data files exist but are unreadable or inconsistent (truncated, wrong format, bad labels)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Data files are missing and could not be downloaded; the message names the folder and how to get them."""
