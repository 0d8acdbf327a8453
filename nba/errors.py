"""User-facing errors.

Every error a user can cause derives from `NbaError`; the CLI prints its message as one line
and exits non-zero (a traceback only with `--debug`). Messages name what was wrong, where,
and what was expected.
"""

from __future__ import annotations


class NbaError(Exception):
    """An error caused by input, configuration or data, reported without a traceback."""

    exit_code = 2


class DataFileError(NbaError):
    """A data file is missing, unreadable or not what the project expects."""


class ChecksumError(DataFileError):
    """A data file's sha256 differs from the published one."""


class SchemaError(NbaError):
    """A table lacks a column or has the wrong type."""


class ConfigError(NbaError):
    """A configuration file or setting is invalid."""


class FeatureStoreError(NbaError):
    """The feature repository, a feature service or an entity frame is invalid."""


class NotWritten(NbaError):
    """A store refused a write before any of it could be committed (its disk is full, its
    server did not answer the connection): a caller may undo what it did for that write. A
    failure during a commit is not one of these: the write may have landed."""

    exit_code = 3
