"""One exception family for everything a user can get wrong.

Torch-free on purpose: the graph layer (which never imports torch) raises and
catches these too.
"""
from __future__ import annotations


class ArnodesError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, ...)."""


class InvalidInputError(ArnodesError, ValueError):
    """A value has the wrong shape, range, type or content."""


class UnknownNameError(ArnodesError, KeyError):
    """A model, class, node or option name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ArnodesError):
    """A checkpoint file is corrupt, unsafe, or does not match the model."""


class MissingFileError(ArnodesError, FileNotFoundError):
    """A file that is needed is not where it was looked for."""


class UnsupportedError(ArnodesError):
    """A valid request this build or device cannot serve (e.g. a quant mode)."""


class CancelledError(ArnodesError):
    """The user cancelled a running generation."""


class StorageError(ArnodesError):
    """A file could not be written or read for a reason outside arnodes (disk full, permissions)."""


class LimitError(InvalidInputError):
    """A request is larger than a configured limit (batch, pixels, graph size, memory); checked before any work."""


def is_user_error(exc: BaseException) -> bool:
    """True for problems the user can fix (our typed errors); anything else escaping a node is our bug."""
    return isinstance(exc, ArnodesError)
