"""Typed configuration: dataclasses filled from YAML files, dicts and ``a.b=c`` overrides.

A config is a (nested) dataclass. :func:`load_config` reads a YAML file (local path or fsspec
URL), applies command-line overrides and converts the result to the dataclass, checking every
value against the field's type annotation:

* nested dataclasses, ``X | None`` / ``Optional[X]``, unions, ``list[X]``, ``tuple[X, ...]``,
  ``tuple[X, Y]``, ``dict[K, V]``, ``Literal[...]``, enums, ``bool``, ``int``, ``float``,
  ``str``, :class:`pathlib.Path` and ``Any``;
* ``dict[str, Any]`` fields are free-form (for example an encoder sub-config whose keys depend
  on the encoder chosen by ``name`` in a registry);
* an ``int`` is accepted where a ``float`` is expected, and so is a numeric string such as
  ``"1e-4"`` (YAML 1.1, which PyYAML implements, reads ``1e-4`` without a dot as a string);
  an integral number written as ``1e5`` or ``100000.0`` is accepted for an ``int``;
* ``bool`` is never accepted for ``int``/``float`` and numbers are never accepted for ``str``.

Overrides are ``dotted.key=value`` strings; the value is parsed with ``yaml.safe_load`` so
``x=3``, ``x=1e-4``, ``x=[1,2]``, ``x=null``, ``x=true`` and ``x={a: 1}`` work. Setting a key
inside a ``dict[str, ...]`` field creates or updates that entry; a numeric component indexes an
existing list entry (``objectives.0=itc``).

Errors raise :class:`ConfigError` naming the dotted key, where the value came from (the file,
or the command-line override), what was expected and what was received; for an unknown key, the
valid keys at that level and the closest matches.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-4
        betas: tuple[float, float] = (0.9, 0.999)

    @dataclass
    class Train:
        optim: Optim = field(default_factory=Optim)
        model: dict[str, Any] = field(default_factory=dict)
        precision: Literal["fp32", "bf16"] = "bf16"

    cfg = load_config(Train, "configs/tiny.yaml", ["optim.lr=3e-4", "model.text.layers=2"])
    save_config(cfg, "run/config.yaml")
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import os
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from xfm.core.checkpoint.atomic import atomic_write
from xfm.core.checkpoint.storage import read_bytes

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
]

T = TypeVar("T")

OVERRIDE_SOURCE = "command line override"


class ConfigError(ValueError):
    """A configuration value or key is invalid.

    Attributes:
        key: the dotted key concerned (``""`` for the whole config).
        source: where the value came from (a file, ``"command line override 'a=b'"``, ...).
    """

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.source = source


# --------------------------------------------------------------------------- type helpers


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
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


_hints_cache: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's init fields (string annotations evaluated)."""
    if cls not in _hints_cache:
        try:
            hints = typing.get_type_hints(cls)
        except NameError as e:
            raise TypeError(
                f"cannot resolve the type annotations of config class {cls.__qualname__}: {e} "
                f"(define config dataclasses at module level)"
            ) from e
        _hints_cache[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _hints_cache[cls]


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return copy.deepcopy(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X`` (other unions unchanged)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_FLOAT_TEXT = re.compile(
    r"^\s*[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?\s*$|^\s*[-+]?(?:inf|nan)\s*$",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- conversion


class _Converter:
    """Converts raw YAML data to typed values; knows where each dotted key came from."""

    def __init__(self, default_source: str, origins: Mapping[str, str]) -> None:
        self.default_source = default_source
        self.origins = origins

    def source_of(self, path: str) -> str:
        parts = path.split(".") if path else []
        for n in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:n]))
            if found:
                return found
        return self.default_source

    def error(self, path: str, message: str) -> ConfigError:
        source = self.source_of(path)
        return ConfigError(f"{source}: {message}", key=path, source=source)

    def wrong_type(self, path: str, tp: Any, value: Any, extra: str = "") -> ConfigError:
        where = f"'{path}'" if path else "the config"
        return self.error(
            path,
            f"invalid value for {where}: expected {_type_name(tp)}, got {_describe(value)}{extra}",
        )

    def convert(self, tp: Any, value: Any, path: str) -> Any:
        if tp is Any or tp is object:
            return value
        if isinstance(tp, TypeVar):
            return value
        origin = get_origin(tp)
        if origin is Literal:
            return self._literal(tp, value, path)
        if origin in (Union, types.UnionType):
            return self._union(tp, value, path)
        if origin is typing.Annotated:
            return self.convert(get_args(tp)[0], value, path)
        if _is_dataclass_type(tp):
            return self._dataclass(tp, value, path)
        if origin in (list, Sequence, typing.Sequence) or tp in (list,):
            return self._list(tp, value, path)
        if origin is tuple or tp is tuple:
            return self._tuple(tp, value, path)
        if origin in (dict, Mapping, typing.Mapping) or tp in (dict,):
            return self._dict(tp, value, path)
        if origin in (set, frozenset) or tp in (set, frozenset):
            items = self._list(list[get_args(tp)[0]] if get_args(tp) else list, value, path)
            return (origin or tp)(items)
        if isinstance(tp, type):
            return self._scalar(tp, value, path)
        raise self.error(path, f"unsupported type annotation {tp!r} for '{path}'")

    def _scalar(self, tp: type, value: Any, path: str) -> Any:
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise self.wrong_type(path, tp, value, " (write true or false)")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            number: Any = value
            if isinstance(value, str) and _FLOAT_TEXT.match(value):
                number = float(value.replace("_", ""))
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise self.wrong_type(path, tp, value)
        if tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and _FLOAT_TEXT.match(value):
                return float(value.replace("_", ""))
            raise self.wrong_type(path, tp, value)
        if tp is str:
            if isinstance(value, str):
                return value
            raise self.wrong_type(path, tp, value, " (quote the value to make it a string)")
        if issubclass(tp, enum.Enum):
            if isinstance(value, tp):
                return value
            for member in tp:
                if value == member.value and type(value) is type(member.value):
                    return member
            if isinstance(value, str) and value in tp.__members__:
                return tp[value]
            raise self.wrong_type(path, tp, value)
        if issubclass(tp, pathlib.PurePath):
            if isinstance(value, str | os.PathLike):
                return tp(value)
            raise self.wrong_type(path, tp, value)
        if isinstance(value, tp):
            return value
        raise self.wrong_type(path, tp, value)

    def _literal(self, tp: Any, value: Any, path: str) -> Any:
        for allowed in get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise self.wrong_type(path, tp, value)

    def _union(self, tp: Any, value: Any, path: str) -> Any:
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise self.wrong_type(path, tp, value)
        errors = []
        # exact types first, so that `int | str` keeps 3 as 3 and "3" as "3"
        ordered = sorted(
            (a for a in args if a is not type(None)),
            key=lambda a: 0 if isinstance(a, type) and type(value) is a else 1,
        )
        for arg in ordered:
            try:
                return self.convert(arg, value, path)
            except ConfigError as e:
                errors.append(e)
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:  # Optional[X]: the error about X is the useful one
            raise errors[0]
        raise self.wrong_type(path, tp, value)

    def _list(self, tp: Any, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.wrong_type(path, tp, value)
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return [self.convert(item_tp, v, f"{path}.{i}") for i, v in enumerate(value)]

    def _tuple(self, tp: Any, value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise self.wrong_type(path, tp, value)
        args = get_args(tp)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(args[0], v, f"{path}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise self.wrong_type(
                path, tp, value, f": expected {len(args)} items, got {len(value)}"
            )
        return tuple(self.convert(a, v, f"{path}.{i}") for i, (a, v) in enumerate(zip(args, value)))

    def _dict(self, tp: Any, value: Any, path: str) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            raise self.wrong_type(path, tp, value)
        args = get_args(tp)
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            out[self.convert(key_tp, k, sub)] = self.convert(val_tp, v, sub)
        return out

    def _dataclass(self, cls: type, value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise self.wrong_type(path, cls, value, " (expected a mapping of its fields)")
        fields = _init_fields(cls)
        hints = _field_types(cls)
        for k in value:
            if k not in fields:
                sub = f"{path}.{k}" if path else str(k)
                raise self.error(sub, _unknown_key_message(sub, path, k, fields))
        kwargs = {}
        for name in fields:
            if name in value:
                sub = f"{path}.{name}" if path else name
                kwargs[name] = self.convert(hints[name], value[name], sub)
        for name, f in fields.items():
            if name not in value and not _has_default(f):
                sub = f"{path}.{name}" if path else name
                raise self.error(
                    sub, f"missing required key '{sub}' (expected {_type_name(hints[name])})"
                )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # __post_init__ validation
            if isinstance(e, ConfigError):
                raise
            where = f"'{path}'" if path else "the config"
            raise self.error(path, f"invalid {where} ({cls.__name__}): {e}") from e


def _unknown_key_message(key: str, parent: str, name: Any, fields: Mapping[str, Any]) -> str:
    valid = sorted(fields)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    level = f"'{parent}'" if parent else "the top level"
    return f"unknown key '{key}'. Valid keys at {level}: {', '.join(valid)}.{hint}"


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", parsed value)`` (value parsed with YAML).

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {text!r}: expected 'dotted.key=value' (e.g. optim.lr=1e-4)",
            source=OVERRIDE_SOURCE,
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {text!r}: the value is not valid YAML: {e}",
            key=key,
            source=OVERRIDE_SOURCE,
        ) from e
    return key, value


def _seed(f: dataclasses.Field[Any] | None) -> Any:
    """Raw data to start from when an override descends into a key absent from the file."""
    if f is None:
        return {}
    default = _default_of(f)
    if default is dataclasses.MISSING or default is None:
        return {}
    return to_dict(default)


def apply_overrides(
    cls: type, data: dict[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply ``a.b=c`` overrides to raw config data, validating the keys against ``cls``.

    Returns:
        The updated data (a new dict; ``data`` is not modified) and, for every overridden
        dotted key, the override it came from.

    Raises:
        ConfigError: for a malformed override or a key that ``cls`` does not have.
    """
    data = copy.deepcopy(data)
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        source = f"{OVERRIDE_SOURCE} {text!r}"
        parts = key.split(".")
        node: Any = data
        tp: Any = cls
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            parent = ".".join(parts[:i])
            tp = _strip_optional(tp)
            if _is_dataclass_type(tp):
                fields = _init_fields(tp)
                if part not in fields:
                    raise ConfigError(
                        f"{source}: {_unknown_key_message(here, parent, part, fields)}",
                        key=here,
                        source=source,
                    )
                child_tp = _field_types(tp)[part]
                child_field: dataclasses.Field[Any] | None = fields[part]
            elif get_origin(tp) in (list, tuple) or tp in (list, tuple):
                if not (part.isdigit() and isinstance(node, list) and int(part) < len(node)):
                    size = len(node) if isinstance(node, list) else 0
                    raise ConfigError(
                        f"{source}: '{parent}' is a list of {size} item(s); cannot set "
                        f"'{here}' (use {parent}=[...] to replace the list)",
                        key=here,
                        source=source,
                    )
                idx = int(part)
                args = get_args(tp)
                if not args:
                    child_tp = Any
                elif get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                    child_tp = args[idx] if idx < len(args) else Any
                else:
                    child_tp = args[0]
                if last:
                    node[idx] = value
                    break
                if node[idx] is None:
                    node[idx] = {}
                node, tp = node[idx], child_tp
                continue
            elif tp is Any or get_origin(tp) in (dict, Mapping) or tp is dict:
                args = get_args(tp)
                child_tp = args[1] if len(args) == 2 else Any
                child_field = None
            else:
                raise ConfigError(
                    f"{source}: cannot set '{here}': '{parent}' holds a single value "
                    f"({_type_name(tp)}), not a section with keys",
                    key=here,
                    source=source,
                )
            if not isinstance(node, dict):
                raise ConfigError(
                    f"{source}: cannot set '{here}': '{parent}' holds {_describe(node)}, not a "
                    f"mapping",
                    key=here,
                    source=source,
                )
            if last:
                node[part] = value
                break
            if node.get(part) is None:
                node[part] = _seed(child_field)
            node, tp = node[part], child_tp
        origins[key] = source
    return data, origins


# --------------------------------------------------------------------------- public API


def config_from_dict(
    cls: type[T],
    data: Mapping[str, Any] | None,
    *,
    source: str = "<dict>",
    overrides: Sequence[str] = (),
) -> T:
    """Build a ``cls`` dataclass from raw data (e.g. parsed YAML), checking every key and value.

    Args:
        cls: the dataclass type.
        data: nested dicts/lists/scalars; ``None`` means empty (all defaults).
        source: how to name the data in error messages (a file name...).
        overrides: ``dotted.key=value`` strings applied on top.

    Raises:
        ConfigError: for an unknown key, a wrong type, or a missing required key.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of config keys at the top level, got {_describe(data)}",
            source=source,
        )
    raw, origins = apply_overrides(cls, dict(data), overrides)
    return _Converter(source, origins).convert(cls, raw, "")


def load_config(
    cls: type[T],
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> T:
    """Load a ``cls`` dataclass from a YAML file (path or fsspec URL), a dict, or nothing
    (defaults), then apply ``dotted.key=value`` overrides.

    Raises:
        FileNotFoundError: when the file does not exist.
        ConfigError: for invalid YAML, an unknown key, a wrong type or a missing required key;
            the message names the dotted key and the file or override it came from.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if source is None or isinstance(source, Mapping):
        return config_from_dict(cls, source, source="<dict>", overrides=overrides)
    name = os.fspath(source)
    try:
        text = read_bytes(name, storage_options=storage_options).decode("utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config file {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not a UTF-8 text file: {e}", source=name) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}", source=name) from e
    return config_from_dict(cls, data, source=name, overrides=overrides)


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


def save_config(
    cfg: Any,
    path_or_url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a config as YAML (atomically; local path or fsspec URL)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    with atomic_write(path_or_url, "w", storage_options=storage_options) as f:
        f.write(text)
