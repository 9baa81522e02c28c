"""Config errors, and the message of a pydantic validation error: the dotted key, what was
expected (the type, its bounds) and what was received, or the valid keys and closest matches."""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

from xfm.core.config.fields import UNIONS, field_types, get, is_dataclass_type, strip, walk

#: How errors name a command-line override (followed by the override, quoted).
OVERRIDE_SOURCE = "command line override"

_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "a multiple of"}


class ConfigError(ValueError):
    """A configuration value or key is invalid.

    Attributes:
        key: the dotted key concerned (``""``: the whole config); relative to the validated
            value when a validator raises it (the caller is told the full key).
        source: where the value came from (a file, ``"command line override 'a=b'"``...).
    """

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        super().__init__(message)
        self.key, self.source = key, source

    def explain(self, key: str) -> tuple[str, str]:
        """Dotted key and message of this error raised by a validator (``key``: its full key)."""
        return key, f"invalid value for '{key}': {self}"


class UnknownKeyError(ConfigError):
    """``key`` is not one of ``valid`` (what a validator raises for an unknown ``what``)."""

    def __init__(
        self, key: str, valid: Sequence[str], *, what: str = "key", note: str = ""
    ) -> None:
        self.valid, self.what, self.note = sorted(valid), what, note
        super().__init__(unknown_key_message(key, valid, what, note), key=key)

    def explain(self, key: str) -> tuple[str, str]:
        return key, unknown_key_message(key, self.valid, self.what, self.note)


def unknown_key_message(key: str, valid: Sequence[str], what: str = "key", note: str = "") -> str:
    """``unknown key 'a.b'. Valid keys at 'a': ... Did you mean ...?`` (``note`` appended)."""
    parent, _, name = key.rpartition(".")
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    level = f"'{parent}'" if parent else "the top level"
    text = f"unknown {what} '{key}'. Valid {what}s at {level}: {', '.join(valid) or '(none)'}."
    return f"{text}{hint} {note}" if note else f"{text}{hint}"


def describe(value: Any) -> str:
    """A received value in messages: its ``repr`` (cut) and its type."""
    text = repr(value)
    return f"{text[:77] + '...' if len(text) > 80 else text} ({type(value).__name__})"


def type_name(tp: Any) -> str:
    """An expected type in messages (``int``, ``one of 'a', 'b'``, ``tuple[float, float]``)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in UNIONS:
        return " | ".join(map(type_name, args))
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is ... else type_name(a) for a in args)}]"
    if isinstance(tp, enum.EnumMeta):
        return f"{tp.__name__} (one of {', '.join(repr(m.value) for m in tp)})"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def explain_errors(
    root: Any, raw: Any, errors: Sequence[Mapping[str, Any]], prefix: str = ""
) -> tuple[str, str]:
    """The dotted key (after ``prefix``) and message of the first of pydantic's ``errors``
    (unknown keys first, missing keys last) of ``raw`` data validated as type ``root``."""
    err = min(errors, key=lambda e: (e["type"] not in _UNKNOWN) + (e["type"] == "missing"))
    kind, ctx, (path, types) = err["type"], err.get("ctx") or {}, walk(root, err["loc"])
    if kind == "missing" and len(path) > 1 and get_origin(strip(types[-2])) is tuple:
        kind, path, types = "too_short", path[:-1], types[:-1]  # an item missing in a tuple
    key = ".".join(str(p) for p in (prefix, *path) if p != "")
    tp, where, inner = strip(types[-1]), f"'{key}'" if key else "config", ctx.get("error")
    if kind in _UNKNOWN:
        return key, unknown_key_message(key, field_types(strip(types[-2])))  # (of a dataclass)
    if kind == "missing":
        return key, f"missing required key '{key}' (expected {type_name(types[-1])})"
    if isinstance(inner, ConfigError):
        return inner.explain(".".join(k for k in (key, inner.key) if k))
    if inner is not None:  # a ValueError or AssertionError of a validator or __post_init__
        if is_dataclass_type(tp):
            return key, f"invalid {where} ({tp.__name__}): {inner}"
        return key, f"invalid value for {where}: {inner}"
    value, expected, extra, args = get(raw, path, err["input"]), type_name(tp), "", get_args(tp)
    if kind in ("too_long", "too_short"):
        fixed = get_origin(tp) is tuple and args[-1:] != (...,)
        extra = f": expected {len(args)} items, got {len(value)}" if fixed else f": {err['msg']}"
    elif bound := " and ".join(f"{op} {ctx[k]}" for k, op in _BOUNDS.items() if k in ctx):
        expected += f" {bound}"
    elif tp in (bool, str):
        extra = " (write true or false)" if tp is bool else " (quote the value to make it a string)"
    elif is_dataclass_type(tp):
        extra = " (expected a mapping of its fields)"
    return key, f"invalid value for {where}: expected {expected}, got {describe(value)}{extra}"
