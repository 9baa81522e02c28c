"""The types of config dataclass fields along a dotted key, and configs back to plain data."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic_core import to_jsonable_python

UNIONS = (Union, types.UnionType)


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X`` and ``X | None`` -> ``X`` (other unions unchanged)."""
    while True:
        args = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) is not Annotated and not (get_origin(tp) in UNIONS and len(args) == 1):
            return tp
        tp = args[0]


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The annotated types of the ``__init__`` fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def child_type(tp: Any, part: Any) -> Any:
    """The type of item ``part`` (field, key or index) of a ``tp``; ``None``: no such item."""
    tp = strip(tp)
    origin, args = get_origin(tp) or tp, get_args(tp)
    if is_dataclass_type(tp):
        return field_types(tp).get(str(part))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return args[part] if isinstance(part, int) and part < len(args) else None
    if origin in (list, tuple, set, frozenset, Sequence, dict, Mapping):
        return args[-1 if origin in (dict, Mapping) else 0] if args else Any
    return Any if tp is Any else None


def walk(root: Any, loc: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The part of a pydantic error location that names data (it ends at a union, whose member
    pydantic names next, or after an unknown key) and the types along it from ``root``
    (``types[i]``: the type at ``path[:i]``)."""
    path, found = [], [root]
    for part in loc:
        tp = strip(found[-1])
        if tp is Any or tp is None or get_origin(tp) in UNIONS:
            break
        path.append(part)
        found.append(child_type(tp, part))
    return path, found


def get(data: Any, path: Sequence[Any], default: Any = None) -> Any:
    """``data[path[0]][path[1]]...``, or ``default`` where the path leads nowhere."""
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def to_dict(cfg: Any) -> Any:
    """A config (dataclass, possibly nested) as plain YAML-safe data: tuples become lists, enums
    their value, paths strings."""
    return to_jsonable_python(cfg, serialize_unknown=True)
