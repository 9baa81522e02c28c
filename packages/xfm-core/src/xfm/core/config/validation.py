"""Validation by pydantic's strict mode on the JSON form of the data (what a YAML file holds),
plus the YAML 1.1 conversions strict mode does not make."""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

from pydantic import ConfigDict, ValidationError, create_model
from pydantic_core import to_json, to_jsonable_python

from xfm.core.config.errors import ConfigError, explain_errors
from xfm.core.config.fields import UNIONS, field_types, get, strip, walk

T = TypeVar("T")

_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.I)


class InvalidConfig(ConfigError):
    """Pydantic's ``errors`` of ``raw`` data (at dotted ``key``) validated as type ``root``."""

    def __init__(self, root: Any, raw: Any, errors: list[Any], key: str = "") -> None:
        self.root, self.raw, self.errors = root, raw, errors
        super().__init__(explain_errors(root, raw, errors, key)[1], key=key)

    def explain(self, key: str) -> tuple[str, str]:
        return explain_errors(self.root, self.raw, self.errors, key)


@functools.cache
def _model(cls: type) -> Any:
    """A pydantic model of one field ``value: cls`` (stdlib dataclasses inherit its config)."""
    strict = ConfigDict(extra="forbid", strict=True)
    return create_model(f"{cls.__name__}Config", __config__=strict, value=(cls, ...))


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as YAML 1.1 means it for type ``tp`` (``"1e-4"`` for a float, ``1e5`` for an
    int, an enum member's name), or ``None``."""
    tp = strip(tp)
    if tp in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value.replace("_", ""))
        if tp is float:
            return value
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(tp, enum.EnumMeta) and isinstance(value, str) and value in tp.__members__:
        return tp[value].value
    if get_origin(tp) in UNIONS and value is not None:
        return next((c for a in get_args(tp) if (c := _coerce(a, value)) is not None), None)
    return None


def validate(cls: type[T], data: Any, context: Any = None, key: str = "") -> T:
    """``cls`` from raw ``data``, or :class:`InvalidConfig` (with dotted ``key``). A failed pass
    converts the values that failed their type by a YAML quirk only, and validates again."""
    raw = to_jsonable_python(data, serialize_unknown=True)
    while True:
        try:
            text = to_json({"value": raw}, inf_nan_mode="constants")
            return _model(cls).model_validate_json(text, context=context).value
        except ValidationError as e:
            errors = [{**err, "loc": err["loc"][1:]} for err in e.errors()]
        changed = False
        for err in errors:
            path, types = walk(cls, err["loc"])
            value = get(raw, path)
            new = _coerce(types[-1], value)
            if path and new is not None and (new != value or type(new) is not type(value)):
                get(raw, path[:-1])[path[-1]], changed = new, True  # final type: passes end
        if not changed:
            raise InvalidConfig(cls, raw, errors, key) from None


@functools.cache
def _partial(cls: type, exclude: frozenset[str]) -> type:
    """``cls``'s fields but ``exclude``, all optional, without ``__post_init__``."""
    fields = [(n, t | None, dataclasses.field(default=None)) for n, t in field_types(cls).items()]
    return dataclasses.make_dataclass(cls.__name__, [f for f in fields if f[0] not in exclude])


def validate_section(
    cls: type,
    data: Mapping[str, Any],
    *,
    exclude: Sequence[str] = (),
    complete: bool = False,
    prefix: str = "",
) -> dict[str, Any]:
    """Check a free-form mapping against the fields of dataclass ``cls`` (in a validator).

    Only the keys present are checked (unknown keys, types, constraints), unless ``complete``:
    then ``cls(**values)`` also runs its ``__post_init__`` checks with the defaults of the
    absent fields. ``exclude``: fields the section may not set. ``prefix``: the dotted key of
    ``data`` relative to the value the calling validator checks.

    Returns:
        The mapping with converted values (``"1e-4"`` -> ``1e-4``), same keys.

    Raises:
        ConfigError: reported by :func:`~xfm.core.config.load_config` under the full key.
    """
    obj = validate(_partial(cls, frozenset(exclude)), dict(data), key=prefix)
    values = {k: getattr(obj, k) for k in data}
    if complete:
        cls(**values)
    return values
