"""MDS column schemas of the four pretraining sources (SPEC section 2).

Every source stores a string ``id`` (unique sample key) and its own columns:

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

from collections.abc import Mapping
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
    """

    source: str
    columns: Mapping[str, str]
    types: Mapping[str, tuple[type, ...]]
    non_empty: tuple[str, ...] = ()

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
        if self.source == "region":
            box = out["box"]
            if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
                raise SchemaError(
                    f"region sample{at}: 'box' must be 4 numbers [x, y, w, h], got {box!r}."
                )
            if box[2] <= 0 or box[3] <= 0:
                raise SchemaError(f"region sample{at}: box {box!r} has no area.")
            out["box"] = [float(v) for v in box]
        if self.source in ("image_text", "region", "image") and not out["image"]:
            raise SchemaError(f"{self.source} sample{at}: column 'image' is empty.")
        return out


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
    ),
    "image": Schema(
        "image",
        {"id": "str", "image": "bytes", "label": "int"},
        {"id": _STR, "image": _BYTES, "label": _INT},
    ),
}
"""Schema of each source, by name."""

SOURCES: Final[tuple[str, ...]] = ("text", "image_text", "region", "image")
"""The sources in the order one optimizer step visits them (SPEC section 2)."""


def get_schema(source: str) -> Schema:
    """The :class:`Schema` of ``source``; raises ``KeyError`` naming the known sources."""
    try:
        return SCHEMAS[source]
    except KeyError:
        raise KeyError(
            f"Unknown data source {source!r}; expected one of {list(SOURCES)}."
        ) from None
