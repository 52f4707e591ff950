"""The errors dpa3 raises for problems a user can fix: one hierarchy under :class:`DPA3Error`.

The command line (:mod:`dpa3.cli`) reports any :class:`DPA3Error` as one line and exits with
status 1; library callers can catch :class:`DPA3Error` or one of its subclasses.  Each subclass
also derives from the builtin exception dpa3 raised before this hierarchy existed, so
``except ValueError`` / ``except RuntimeError`` around dpa3 calls keep working.

This module imports nothing from dpa3, so every layer of the package may raise these errors.
"""

from __future__ import annotations


class DPA3Error(Exception):
    """Base of every error dpa3 reports to the user (one line, no traceback, on the CLI)."""


class ConfigError(DPA3Error, ValueError):
    """A configuration value or key is invalid; the message names the key path."""


class DataError(DPA3Error, ValueError):
    """A data file or folder is missing or malformed; the message names the file."""


class DeviceError(DPA3Error, ValueError):
    """A device option that cannot be honoured (unknown value, or CUDA without a GPU)."""


class CheckpointError(DPA3Error, RuntimeError):
    """A checkpoint is missing or is not a dpa3 checkpoint (or not one that fits the request)."""


class ModelFileError(DPA3Error, ValueError):
    """A frozen model file that this dpa3 cannot load, or a model or metadata that breaks the
    frozen-model contract (``docs/internals.md``)."""


class ExportError(DPA3Error, RuntimeError):
    """A model cannot be frozen here: the op library is not available, or a message-passing
    model never calls the ghost-feature exchange op."""


class PlotError(DPA3Error, ValueError):
    """An input that cannot be plotted (a learning-curve file without header or data rows,
    parity samples that do not match)."""


class UsageError(DPA3Error, ValueError):
    """Command-line arguments that cannot be used (conflicting or out of range)."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DPA3Error",
    "DataError",
    "DeviceError",
    "ExportError",
    "ModelFileError",
    "PlotError",
    "UsageError",
]
