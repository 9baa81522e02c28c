"""Exceptions raised by :mod:`xfm.core.checkpoint`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xfm.core.checkpoint.report import LoadReport

__all__ = [
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "KeyMappingError",
    "NotInvertibleError",
]


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read as expected (corrupt, truncated, unsafe, or
    not holding a state dict where one was expected). The message names the path."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint's bytes do not match its recorded digest (corrupt or truncated), or it has
    no digest (an interrupted save). Resuming falls back to an older checkpoint on this error."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written to its destination, even after retries.

    Attributes:
        url: the destination that failed.
        fallback_url: where the data was written instead (a local path), or ``None``.
    """

    def __init__(self, message: str, url: str, fallback_url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.fallback_url = fallback_url


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit a module: missing, unexpected or shape-mismatched keys.

    Attributes:
        report: the :class:`~xfm.core.checkpoint.report.LoadReport` with every problem.
    """

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


class KeyMappingError(ValueError):
    """A :class:`~xfm.core.checkpoint.keymap.KeyMapper` cannot convert a state dict: two keys map
    to the same name, a merge is incomplete, or a transform returned the wrong number of tensors."""


class NotInvertibleError(ValueError):
    """A key-mapping rule has no automatic inverse (give it an explicit inverse, or write a
    separate export mapper)."""
