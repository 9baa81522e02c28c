"""Writers of MDS shards, one per source schema, on top of ``streaming.MDSWriter``.

``out`` is a local folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix``; remote shards
are staged in a temporary folder and uploaded by ``streaming``. Example::

    with ImageTextWriter("s3://bucket/coco/train", compression="zstd") as w:
        w.write(image=pil_image, caption="a dog", image_id="42")
    print(w.summary)
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

from PIL import Image

from xfm.train.data.errors import DataSourceError, SchemaError
from xfm.train.data.images import encode_image
from xfm.train.data.schemas import NO_LABEL, Schema, get_schema

__all__ = [
    "ImageTextWriter",
    "ImageWriter",
    "RegionWriter",
    "ShardWriter",
    "TextWriter",
    "WriteSummary",
    "open_writer",
]


@dataclass
class WriteSummary:
    """What a writer did: samples written, and samples skipped with the reason for each.

    Attributes:
        source: the source written.
        out: where it was written.
        written: number of samples written.
        skipped: number of samples skipped, by reason (first line of the error).
        examples: up to 5 example messages per reason (with the sample location).
    """

    source: str
    out: str
    written: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        """Total number of skipped samples."""
        return sum(self.skipped.values())

    def skip(self, reason: str, detail: str = "") -> None:
        """Count one skipped sample under ``reason``; keep ``detail`` as an example."""
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if detail and len(ex) < 5:
            ex.append(detail)

    def merge(self, other: WriteSummary) -> None:
        """Add the counts of ``other`` to this summary."""
        self.written += other.written
        for reason, n in other.skipped.items():
            self.skipped[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.examples.get(reason, [])[: 5 - len(ex)])

    def format(self) -> str:
        """A readable multi-line report."""
        lines = [f"{self.source} -> {self.out}: {self.written} written, {self.num_skipped} skipped"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n}: {reason}")
            lines.extend(f"    e.g. {e}" for e in self.examples.get(reason, [])[:3])
        return "\n".join(lines)


class ShardWriter:
    """Base writer: validates samples against the source schema and writes MDS shards.

    Args:
        out: local folder, ``s3://...`` or ``gs://...`` (a fresh location).
        compression: shard compression understood by streaming (``"zstd"``, ``"zstd:7"``,
            ``"gz"``, ``None``...).
        size_limit: shard size before compression, bytes or a string like ``"64mb"``.
        image_format: encoding of PIL images given to :meth:`write` (``"JPEG"`` or ``"PNG"``).
        exist_ok: allow writing into a non-empty local folder (streaming overwrites it).
        progress_bar: show streaming's upload progress bars.
        source: the registered data source to write (a plug-in's, say); subclasses set the
            class attribute instead. Samples are given to :meth:`write_sample` as column dicts.
    """

    source: ClassVar[str] = ""

    def __init__(
        self,
        out: str,
        *,
        source: str | None = None,
        compression: str | None = None,
        size_limit: int | str = 1 << 26,
        image_format: str = "JPEG",
        exist_ok: bool = False,
        progress_bar: bool = False,
    ) -> None:
        from streaming import MDSWriter

        if source is not None:
            self.source = source  # type: ignore[misc]  (the instance's source)
        if not self.source:
            raise ValueError("ShardWriter needs a source: pass source=... or use a subclass")
        self.schema: Schema = get_schema(self.source)
        self.out = str(out)
        self.image_format = image_format
        self.summary = WriteSummary(self.source, self.out)
        self._closed = False
        try:
            self._writer = MDSWriter(
                columns=dict(self.schema.columns),
                out=self.out,
                compression=compression,
                size_limit=size_limit,
                exist_ok=exist_ok,
                progress_bar=progress_bar,
            )
        except (FileExistsError, ValueError, TypeError) as exc:
            raise DataSourceError(self.out, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # botocore / google errors: wrong bucket, credentials
            raise DataSourceError(self.out, _cloud_reason(exc)) from exc

    def _image_bytes(self, image: bytes | Image.Image) -> bytes:
        if isinstance(image, Image.Image):
            return encode_image(image, self.image_format)
        return image

    def write_sample(self, sample: Mapping[str, Any], *, where: str = "") -> bool:
        """Validate and write one sample given as a column dict.

        Returns:
            ``True`` when written; ``False`` when it failed validation (counted in
            :attr:`summary` with the reason).
        """
        try:
            row = self.schema.validate(sample, where=where)
        except SchemaError as exc:
            self.summary.skip(_reason(str(exc)), str(exc))
            return False
        self._writer.write(row)
        self.summary.written += 1
        return True

    def write_unchecked(self, sample: Mapping[str, Any]) -> None:
        """Write ``sample`` without validation (to build corrupt test data on purpose)."""
        self._writer.write(dict(sample))
        self.summary.written += 1

    def close(self) -> WriteSummary:
        """Flush the last shard, write ``index.json`` (and upload); return the summary."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.finish()
            except Exception as exc:
                raise DataSourceError(self.out, _cloud_reason(exc)) from exc
        return self.summary

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # do not publish an index for a failed run, but stop streaming's threads
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.cancel_future_jobs()


class TextWriter(ShardWriter):
    """Writer of the ``text`` source: one document per sample."""

    source = "text"

    def write(self, text: str, id: str) -> bool:
        """Write one document; returns ``False`` if skipped (empty text)."""
        return self.write_sample({"id": id, "text": text}, where=f"id={id}")


class ImageTextWriter(ShardWriter):
    """Writer of the ``image_text`` source: (image, caption) pairs."""

    source = "image_text"

    def write(self, image: bytes | Image.Image, caption: str, image_id: str, id: str) -> bool:
        """Write one pair; ``image`` is encoded bytes or a PIL image (encoded here)."""
        sample = {"id": id, "image": self._image_bytes(image), "caption": caption}
        sample["image_id"] = image_id
        return self.write_sample(sample, where=f"id={id}")


class RegionWriter(ShardWriter):
    """Writer of the ``region`` source: (image, box in pixels, region caption)."""

    source = "region"

    def write(
        self,
        image: bytes | Image.Image,
        box: tuple[float, float, float, float] | list[float],
        caption: str,
        image_id: str,
        id: str,
        size: tuple[int, int],
    ) -> bool:
        """Write one region; ``box`` is ``[x, y, w, h]`` and ``size`` ``(width, height)``."""
        sample = {
            "id": id,
            "image": self._image_bytes(image),
            "box": list(box),
            "caption": caption,
            "image_id": image_id,
            "width": int(size[0]),
            "height": int(size[1]),
        }
        return self.write_sample(sample, where=f"id={id}")


class ImageWriter(ShardWriter):
    """Writer of the ``image`` source: images with an optional integer label."""

    source = "image"

    def write(self, image: bytes | Image.Image, id: str, label: int | None = None) -> bool:
        """Write one image; ``label=None`` stores :data:`NO_LABEL`."""
        sample = {"id": id, "image": self._image_bytes(image)}
        sample["label"] = NO_LABEL if label is None else label
        return self.write_sample(sample, where=f"id={id}")


_WRITERS: dict[str, type[ShardWriter]] = {
    "text": TextWriter,
    "image_text": ImageTextWriter,
    "region": RegionWriter,
    "image": ImageWriter,
}


def open_writer(source: str, out: str, **kwargs: Any) -> ShardWriter:
    """The writer of registered data source ``source`` (see :class:`ShardWriter` for
    ``kwargs``): a built-in source's own writer class, else a :class:`ShardWriter` whose
    :meth:`~ShardWriter.write_sample` takes the source's column dicts."""
    get_schema(source)
    if source in _WRITERS:
        return _WRITERS[source](out, **kwargs)
    return ShardWriter(out, source=source, **kwargs)


def _reason(message: str) -> str:
    """A message without its sample location, to group skipped samples by cause."""
    import re

    return re.sub(r" \([^)]*\)", "", message).split(";")[0]


def _cloud_reason(exc: BaseException) -> str:
    """One line naming the cloud error (wrong bucket, missing credentials...)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    hints = {
        "NoCredentialsError": "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "or a profile)",
        "NoSuchBucket": "the bucket does not exist",
        "DefaultCredentialsError": "no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS)",
    }
    for key, hint in hints.items():
        if key in name or key in text:
            return f"{hint} ({name}: {text})"
    return f"{name}: {text}"
