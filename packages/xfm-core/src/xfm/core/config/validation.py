"""Validation with pydantic: strict mode on the JSON form of the data (what a YAML file holds),
plus the YAML 1.1 conversions strict mode does not make (``"1e-4"`` for a float, ``1e5`` for an
int, an enum member's name)."""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args

from pydantic import ConfigDict, ValidationError, create_model
from pydantic_core import to_json

from xfm.core.config.errors import ConfigError, _Reporter, _SectionErrors
from xfm.core.config.fields import _field_types, _get, _is_union, _set, _strip, _walk

__all__ = ["validate_section"]

T = TypeVar("T")

_FLOAT_TEXT = re.compile(
    r"^\s*[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?\s*$|^\s*[-+]?(?:inf|nan)\s*$",
    re.IGNORECASE,
)

_STRICT = ConfigDict(extra="forbid", strict=True)


@functools.cache
def _root_model(cls: type) -> Any:
    """A pydantic model with one field ``value: cls`` (stdlib dataclasses inherit its config)."""
    return create_model(f"{cls.__name__}Config", __config__=_STRICT, value=(cls, ...))


def _to_json(data: Any) -> bytes:
    return to_json({"value": data}, inf_nan_mode="constants", serialize_unknown=True)


def _coerce(tp: Any, value: Any) -> Any:
    """The YAML-quirk conversions pydantic's strict mode does not do; ``None``: none applies."""
    tp = _strip(tp)
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.match(value):
        return float(value.replace("_", ""))
    if tp is int and not isinstance(value, bool):
        number = value
        if isinstance(value, str) and _FLOAT_TEXT.match(value):
            number = float(value.replace("_", ""))
        if isinstance(number, float) and number.is_integer():
            return int(number)
    enum_name = isinstance(value, str) and isinstance(tp, type) and issubclass(tp, enum.Enum)
    if enum_name and value in tp.__members__:
        return tp[value].value
    if _is_union(tp) and value is not None:
        for arg in get_args(tp):
            if arg is not type(None) and (coerced := _coerce(arg, value)) is not None:
                return coerced
    return None


def _patch(root: type, data: Any, errors: list[Any]) -> bool:
    """Apply :func:`_coerce` where a scalar failed; ``True`` when something changed."""
    changed = False
    for err in errors:
        if not err["type"].startswith(("int_", "float_", "enum")):
            continue
        path, tp = _walk(root, err["loc"][1:])
        found, value = _get(data, path)
        if not found or tp is None:
            continue
        coerced = _coerce(tp, value)
        if coerced is not None and (type(coerced) is not type(value) or coerced != value):
            _set(data, path, coerced)
            changed = True
    return changed


def _validate(
    cls: type[T], data: Any, source: str, origins: Mapping[str, str], context: Any = None
) -> T:
    """``cls`` from raw data, or one :class:`ConfigError` for the first problem.

    Each failed pass converts the values that failed only by a YAML quirk (:func:`_coerce`) and
    validates again; a converted value has its final type, so the passes end.
    """
    model = _root_model(cls)
    data = copy.deepcopy(data)
    while True:
        try:
            return model.model_validate_json(_to_json(data), context=context).value
        except ValidationError as e:
            errors = e.errors()
            if not _patch(cls, data, errors):
                raise _Reporter(source, origins).error(cls, data, errors, []) from None
        except TypeError as e:  # __post_init__ raising TypeError: pydantic does not wrap it
            raise ConfigError(f"{source}: invalid config ({cls.__name__}): {e}") from e


@functools.cache
def _partial(cls: type, exclude: frozenset[str]) -> type:
    """A dataclass with ``cls``'s fields (minus ``exclude``), all optional, no ``__post_init__``."""
    fields = [
        (name, tp | None, dataclasses.field(default=None))
        for name, tp in _field_types(cls).items()
        if name not in exclude
    ]
    partial = dataclasses.make_dataclass(cls.__name__, fields)
    partial.__module__ = cls.__module__
    return partial


def validate_section(
    cls: type,
    data: Mapping[str, Any],
    *,
    exclude: Sequence[str] = (),
    complete: bool = False,
    prefix: str = "",
) -> dict[str, Any]:
    """Check a free-form mapping against the fields of dataclass ``cls`` (for validators).

    Only the keys present are checked (unknown keys, types, ``Annotated`` constraints), unless
    ``complete``: then ``cls(**values)`` is also built, so that its ``__post_init__`` checks run
    with the defaults of the missing fields. ``exclude`` lists fields the section may not set.
    ``prefix``: the dotted key of ``data`` relative to the value the calling validator checks.

    Returns:
        The mapping with converted values (e.g. ``"1e-4"`` -> ``1e-4``), same keys.

    Raises:
        ValueError: reported by :func:`load_config` under the section's dotted key.
    """
    partial = _partial(cls, frozenset(exclude))
    raw = copy.deepcopy(dict(data))
    model = _root_model(partial)
    while True:
        try:
            obj = model.model_validate_json(_to_json(raw)).value
            break
        except ValidationError as e:
            if not _patch(partial, raw, e.errors()):
                raise _SectionErrors(partial, raw, e.errors(), prefix) from None
    values = {k: getattr(obj, k) for k in raw}
    if complete:
        cls(**values)
    return values
