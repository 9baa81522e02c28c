"""Exceptions of the data layer and the record of a skipped sample."""

from __future__ import annotations

from dataclasses import dataclass

from xfm.core.cli.errors import register_user_error

__all__ = [
    "BadSample",
    "BadSampleError",
    "DataError",
    "DataSourceError",
    "SchemaError",
    "TooManyBadSamplesError",
]


class DataError(Exception):
    """Base class of every error raised by :mod:`xfm.train.data`."""


class SchemaError(DataError, ValueError):
    """A sample does not match the columns of its source (missing field, wrong type)."""


class BadSampleError(DataError, ValueError):
    """One stored sample cannot be used (corrupt image, missing field, empty caption)."""


class DataSourceError(DataError, OSError):
    """A dataset location cannot be opened: wrong bucket, missing credentials, no index file.

    Attributes:
        url: the location that was asked for (``/path``, ``s3://...`` or ``gs://...``).
    """

    def __init__(self, url: str, reason: str | None = None) -> None:
        # One argument: a complete message (how torch's DataLoader rebuilds a worker's error).
        self.url = url
        self.reason = reason if reason is not None else url
        super().__init__(f"Cannot open dataset at {url!r}: {reason}" if reason is not None else url)


class TooManyBadSamplesError(DataError, RuntimeError):
    """More samples were skipped than ``max_bad_fraction`` allows."""


# Every data error is a user error: the ``xfm`` command prints it as one ``error:`` line.
register_user_error(DataError)


@dataclass(frozen=True)
class BadSample:
    """Placeholder yielded by a dataset in place of a sample it had to skip.

    Collate functions drop it and count it, so the sample still counts as consumed for
    exact resumption.

    Attributes:
        source: the data source name (``"image_text"``, ...).
        sample_id: global index of the sample in its dataset.
        shard: file name of the shard that holds it.
        index: index of the sample inside that shard.
        reason: why it was skipped (one line).
    """

    source: str
    sample_id: int
    shard: str
    index: int
    reason: str
