"""MDS column schemas: the columns of each pretraining source and how a sample is checked.

A :class:`Schema` is part of a registered data source (see :mod:`xfm.train.data.sources`);
:func:`get_schema` finds it by source name through the ``data_source`` registry, so the writers
and loaders accept plug-in sources too. Every source stores a string ``id`` (unique sample key)
and its own columns; those of the four built-in sources (SPEC section 2):

============  ==============================================================================
source        columns
============  ==============================================================================
text          ``text`` (str: one document)
image_text    ``image`` (bytes: encoded JPEG/PNG), ``caption`` (str), ``image_id`` (str)
region        ``image`` (bytes), ``box`` (json ``[x, y, w, h]`` in pixels of the stored image),
              ``caption`` (str: the region caption), ``image_id`` (str), ``width``/``height``
              (int: the stored image size in pixels)
image         ``image`` (bytes), ``label`` (int, ``-1`` when the image has no label)
============  ==============================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from xfm.train.data.errors import SchemaError

__all__ = ["NO_LABEL", "SCHEMAS", "SOURCES", "Schema", "get_schema"]

NO_LABEL: Final[int] = -1
"""Value of the ``label`` column of an ``image`` sample without a label."""


@dataclass(frozen=True)
class Schema:
    """The MDS columns of one source and the Python types their values must have.

    Attributes:
        source: the source name.
        columns: MDS encodings by column name (passed to ``streaming.MDSWriter``).
        types: accepted Python types by column name.
        non_empty: string columns that must not be empty or whitespace.
        check: further checks of a typed sample, ``check(row, at)``: raise
            :class:`~xfm.train.data.errors.SchemaError` (``at`` locates the sample in the
            message) or return the row, possibly normalised (e.g. a box as floats).
    """

    source: str
    columns: Mapping[str, str]
    types: Mapping[str, tuple[type, ...]]
    non_empty: tuple[str, ...] = ()
    check: Callable[[dict[str, Any], str], dict[str, Any]] | None = None

    def validate(self, sample: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Check ``sample`` against the schema; return it as a plain dict of the columns only.

        Raises:
            SchemaError: a column is missing, has the wrong type, or a required text is empty.
        """
        at = f" ({where})" if where else ""
        missing = [c for c in self.columns if c not in sample]
        if missing:
            raise SchemaError(
                f"{self.source} sample{at} is missing column(s) {missing}; expected columns "
                f"{sorted(self.columns)}, got {sorted(sample)}."
            )
        out: dict[str, Any] = {}
        for name, types in self.types.items():
            value = sample[name]
            if not isinstance(value, types) or isinstance(value, bool):
                expected = " or ".join(t.__name__ for t in types)
                raise SchemaError(
                    f"{self.source} sample{at}: column {name!r} must be {expected}, got "
                    f"{type(value).__name__}."
                )
            out[name] = value
        for name in self.non_empty:
            if not str(out[name]).strip():
                raise SchemaError(f"{self.source} sample{at}: column {name!r} is empty.")
        if self.check is not None:
            out = self.check(out, at)
        return out


def _check_image(row: dict[str, Any], at: str, source: str) -> dict[str, Any]:
    if not row["image"]:
        raise SchemaError(f"{source} sample{at}: column 'image' is empty.")
    return row


def _image_check(source: str) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    return functools.partial(_check_image, source=source)  # (picklable, unlike a lambda)


def _check_region(row: dict[str, Any], at: str) -> dict[str, Any]:
    box = row["box"]
    if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
        raise SchemaError(f"region sample{at}: 'box' must be 4 numbers [x, y, w, h], got {box!r}.")
    if box[2] <= 0 or box[3] <= 0:
        raise SchemaError(f"region sample{at}: box {box!r} has no area.")
    row["box"] = [float(v) for v in box]
    return _check_image(row, at, "region")


_BYTES = (bytes,)
_STR = (str,)
_INT = (int,)

SCHEMAS: Final[dict[str, Schema]] = {
    "text": Schema("text", {"id": "str", "text": "str"}, {"id": _STR, "text": _STR}, ("text",)),
    "image_text": Schema(
        "image_text",
        {"id": "str", "image": "bytes", "caption": "str", "image_id": "str"},
        {"id": _STR, "image": _BYTES, "caption": _STR, "image_id": _STR},
        ("caption",),
        _image_check("image_text"),
    ),
    "region": Schema(
        "region",
        {
            "id": "str",
            "image": "bytes",
            "box": "json",
            "caption": "str",
            "image_id": "str",
            "width": "int",
            "height": "int",
        },
        {
            "id": _STR,
            "image": _BYTES,
            "box": (list, tuple),
            "caption": _STR,
            "image_id": _STR,
            "width": _INT,
            "height": _INT,
        },
        ("caption",),
        _check_region,
    ),
    "image": Schema(
        "image",
        {"id": "str", "image": "bytes", "label": "int"},
        {"id": _STR, "image": _BYTES, "label": _INT},
        check=_image_check("image"),
    ),
}
"""Schema of each built-in source, by name (every source's: :func:`get_schema`)."""

SOURCES: Final[tuple[str, ...]] = ("text", "image_text", "region", "image")
"""The built-in sources in the order one optimizer step visits them (SPEC section 2); plug-in
sources come after them (see :attr:`xfm.train.data.sources.DataSource.order`)."""


def get_schema(source: str) -> Schema:
    """The :class:`Schema` of registered data source ``source`` (built-in or plug-in).

    Raises:
        KeyError: no such source (the message lists the registered ones).
    """
    from xfm.core.registry import get  # the registry, not xfm.train.data.sources: no cycle

    return get("data_source", source).schema
