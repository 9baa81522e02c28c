"""Config errors, and the translation of pydantic's validation errors into one
:class:`ConfigError` naming the dotted key, the source, what was expected and what was received."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from xfm.core.config.fields import (
    _describe,
    _get,
    _init_fields,
    _is_dataclass_type,
    _strip,
    _type_name,
    _walk,
)

__all__ = ["OVERRIDE_SOURCE", "ConfigError", "UnknownKeyError", "unknown_key_message"]

OVERRIDE_SOURCE = "command line override"


class ConfigError(ValueError):
    """A configuration value or key is invalid.

    Attributes:
        key: the dotted key concerned (``""`` for the whole config). Raised from a validator
            during validation, it is relative to the validated value and the message says what
            is wrong with it; the error reported to the caller names the full key.
        source: where the value came from (a file, ``"command line override 'a=b'"``, ...).
    """

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class UnknownKeyError(ConfigError):
    """A key that is not one of ``valid`` (raised by validators; reported with the full key,
    the valid names at that level and the closest matches)."""

    def __init__(
        self, key: str, valid: Sequence[str], *, what: str = "key", note: str = ""
    ) -> None:
        self.name = key.rsplit(".", 1)[-1]
        self.valid = sorted(valid)
        self.what = what
        self.note = note
        super().__init__(unknown_key_message(key, "", self.name, self.valid, what, note), key=key)


def unknown_key_message(
    key: str,
    parent: str,
    name: Any,
    valid: Sequence[str],
    what: str = "key",
    note: str = "",
) -> str:
    """``unknown key 'a.b'. Valid keys at 'a': ... Did you mean ...?`` (``note`` appended)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    level = f"'{parent}'" if parent else "the top level"
    listed = ", ".join(valid) if valid else "(none)"
    tail = f" {note}" if note else ""
    return f"unknown {what} '{key}'. Valid {what}s at {level}: {listed}.{hint}{tail}"


class _SectionErrors(ValueError):
    """Errors of :func:`validate_section`, re-reported under the section's key."""

    def __init__(self, root: type, data: Any, errors: list[Any], prefix: str) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.root = root
        self.data = data
        self.errors = errors
        self.prefix = prefix.split(".") if prefix else []


class _Reporter:
    """Turns pydantic errors into one :class:`ConfigError` naming key, source, expected, got."""

    _ORDER = ("unexpected_keyword_argument", "extra_forbidden")

    def __init__(self, default_source: str, origins: Mapping[str, str]) -> None:
        self.default_source = default_source
        self.origins = origins

    def source_of(self, key: str) -> str:
        parts = key.split(".") if key else []
        for n in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:n]))
            if found:
                return found
        below = [s for k, s in self.origins.items() if k.startswith(f"{key}.")]
        overridden = [s for s in below if s.startswith(OVERRIDE_SOURCE)]
        return (overridden or below or [self.default_source])[-1]

    def make(self, key: str, message: str) -> ConfigError:
        source = self.source_of(key)
        return ConfigError(f"{source}: {message}", key=key, source=source)

    def error(self, root: type, data: Any, errors: list[Any], prefix: list[Any]) -> ConfigError:
        def rank(err: Any) -> int:
            if err["type"] in self._ORDER:
                return 0
            return 2 if err["type"] == "missing" else 1

        err = sorted(errors, key=rank)[0]
        path, tp = _walk(root, err["loc"][1:])
        key = ".".join(str(p) for p in (*prefix, *path))
        where = f"'{key}'" if key else "the config"
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind in self._ORDER:
            _, parent_tp = _walk(root, path[:-1])
            valid = list(_init_fields(_strip(parent_tp))) if parent_tp is not None else []
            parent = ".".join(str(p) for p in (*prefix, *path[:-1]))
            return self.make(key, unknown_key_message(key, parent, path[-1], valid))
        if kind == "missing":
            parent_tp = _walk(root, path[:-1])[1] if path else None
            if parent_tp is not None and get_origin(_strip(parent_tp)) is tuple:
                kind, path = "too_short", path[:-1]
                tp = parent_tp
                key = ".".join(str(p) for p in (*prefix, *path))
                where = f"'{key}'"
            else:
                return self.make(key, f"missing required key '{key}' (expected {_type_name(tp)})")
        found, value = _get(data, path)
        if not found:
            value = err.get("input")
        inner = ctx.get("error")
        if isinstance(inner, _SectionErrors):
            nested = _Reporter(self.default_source, self.origins)
            return nested.error(
                inner.root, inner.data, inner.errors, [*prefix, *path, *inner.prefix]
            )
        if isinstance(inner, UnknownKeyError):
            full = ".".join(x for x in (key, inner.key) if x)
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            return self.make(
                full,
                unknown_key_message(full, parent, inner.name, inner.valid, inner.what, inner.note),
            )
        if isinstance(inner, ConfigError):
            full = ".".join(x for x in (key, inner.key) if x)
            return self.make(full, f"invalid value for '{full}': {inner}")
        if inner is not None:  # a ValueError / AssertionError of a validator or __post_init__
            stripped = _strip(tp)
            if _is_dataclass_type(stripped):
                return self.make(key, f"invalid {where} ({stripped.__name__}): {inner}")
            return self.make(key, f"invalid value for {where}: {inner}")
        stripped = _strip(tp)
        expected = _type_name(stripped)  # Optional[X]: "expected X", as X is what is missing
        extra = ""
        if kind in ("too_long", "too_short") and isinstance(value, list | tuple):
            args = get_args(stripped)
            if get_origin(stripped) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                extra = f": expected {len(args)} items, got {len(value)}"
            else:
                extra = f": {err['msg']}"
        elif bound := _bound(ctx):
            expected = f"{expected} {bound}"
        elif stripped is bool:
            extra = " (write true or false)"
        elif stripped is str:
            extra = " (quote the value to make it a string)"
        elif _is_dataclass_type(stripped):
            extra = " (expected a mapping of its fields)"
        return self.make(
            key, f"invalid value for {where}: expected {expected}, got {_describe(value)}{extra}"
        )


def _bound(ctx: Mapping[str, Any]) -> str:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "a multiple of"}
    return " and ".join(f"{ops[k]} {ctx[k]}" for k in ops if k in ctx)
