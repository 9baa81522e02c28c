"""Shared machinery of the converters: a progress bar and the write summary."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from xfm.train.data.errors import BadSampleError
from xfm.train.data.writers import ShardWriter, WriteSummary, open_writer

__all__ = ["Skip", "write_all"]


class Skip(BadSampleError):
    """Raised by a reader for one input record that cannot become a sample."""


def write_all(
    source: str,
    records: Iterable[dict[str, Any] | Skip],
    out: str,
    *,
    total: int | None = None,
    progress: bool = True,
    desc: str = "",
    **writer_kwargs: Any,
) -> WriteSummary:
    """Write every record (a column dict) to ``out``; count :class:`Skip` items as skipped.

    Returns:
        The :class:`WriteSummary` (written count, skipped counts by reason).
    """
    writer: ShardWriter = open_writer(source, out, **writer_kwargs)
    with writer:
        for rec in tqdm(records, total=total, desc=desc or source, disable=not progress):
            if isinstance(rec, Skip):
                msg = str(rec)
                writer.summary.skip(msg.split(":")[0], msg)
                continue
            writer.write_sample(rec, where=str(rec.get("id", "")))
    return writer.summary


def iter_limit(items: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first ``limit`` items (all when ``None``)."""
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
