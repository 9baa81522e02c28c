"""Type helpers of the config package: dataclass field types, walking a type along a dotted
path, naming types and values in messages, and converting configs to plain data."""

from __future__ import annotations

import dataclasses
import enum
import functools
import pathlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["to_dict"]


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = get_args(tp)
        base = getattr(origin, "__name__", str(origin))
        if not args:
            return base
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{base}[{inner}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"{tp.__name__} (one of {', '.join(repr(m.value) for m in tp)})"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations (``Annotated`` kept) of a dataclass's init fields."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as e:
        raise TypeError(
            f"cannot resolve the type annotations of config class {cls.__qualname__}: {e} "
            f"(define config dataclasses at module level)"
        ) from e
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X`` and ``X | None`` -> ``X`` (other unions unchanged)."""
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _child_type(tp: Any, part: Any) -> Any:
    """The type of ``part`` inside a value of (stripped) type ``tp``; ``None`` when unknown."""
    origin = get_origin(tp)
    args = get_args(tp)
    if _is_dataclass_type(tp):
        return _field_types(tp).get(str(part))
    if origin in (list, set, frozenset, Sequence) or tp in (list, set, frozenset):
        return args[0] if args else Any
    if origin is tuple or tp is tuple:
        if not args:
            return Any
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[part] if isinstance(part, int) and part < len(args) else None
    if origin in (dict, Mapping) or tp is dict:
        return args[1] if len(args) == 2 else Any
    return None


def _walk(root: Any, loc: Sequence[Any]) -> tuple[list[Any], Any]:
    """Follow a pydantic error location through the types from ``root``.

    Returns the part of ``loc`` that names data (stopping at a union of several types, whose
    members pydantic tags in the location, and at unknown keys) and the type found there.
    """
    path: list[Any] = []
    tp = root
    for part in loc:
        stripped = _strip(tp)
        if _is_union(stripped) or stripped is Any:
            break
        child = _child_type(stripped, part)
        if child is None:
            path.append(part)
            return path, None
        path.append(part)
        tp = child
    return path, tp


def _get(data: Any, path: Sequence[Any]) -> tuple[bool, Any]:
    node = data
    for part in path:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Mapping) and str(part) in node:
            node = node[str(part)]
        elif isinstance(node, list | tuple) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def _set(data: Any, path: Sequence[Any], value: Any) -> None:
    _, parent = _get(data, path[:-1])
    key = path[-1]
    if isinstance(parent, Mapping) and key not in parent and str(key) in parent:
        key = str(key)
    parent[key] = value


def to_dict(cfg: Any) -> Any:
    """Convert a config (dataclass, possibly nested) to plain YAML-safe data.

    Tuples become lists, enums their value, paths strings; :func:`config_from_dict` of the
    result gives back an equal config.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, enum.Enum):
        return to_dict(cfg.value)
    if isinstance(cfg, pathlib.PurePath):
        return str(cfg)
    if isinstance(cfg, Mapping):
        return {to_dict(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple | set | frozenset):
        return [to_dict(v) for v in cfg]
    return cfg
