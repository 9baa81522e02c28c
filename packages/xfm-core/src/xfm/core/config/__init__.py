"""Typed configuration: dataclasses filled from YAML files, dicts and ``a.b=c`` overrides.

A config is a (nested) dataclass. :func:`load_config` reads a YAML file (local path or fsspec
URL), follows its ``base:`` chain, applies command-line overrides and validates the result with
`pydantic <https://docs.pydantic.dev>`_ v2 against the dataclass's type annotations (every type
pydantic supports, including ``Annotated[int, Field(ge=1)]`` constraints and ``__post_init__``
checks). Validation is pydantic's *strict* mode on the JSON form of the data, which is what a
YAML file holds:

* ``bool`` is never accepted for ``int``/``float``, numbers are never accepted for ``str``,
  and only ``true``/``false`` are booleans;
* an ``int`` is accepted where a ``float`` is expected, lists where tuples are expected, enum
  values (and, here, enum member names) for enums;
* a numeric string such as ``"1e-4"`` is accepted for a ``float`` (YAML 1.1, which PyYAML
  implements, reads ``1e-4`` without a dot as a string), and an integral number written as
  ``1e5`` or ``100000.0`` for an ``int``.

``base: other.yaml`` at the top of a file starts from that file (a path relative to the
including file, or a URL); the including file's keys are merged over the base's (mappings
merge key by key, other values replace). Cycles are an error.

Overrides are ``dotted.key=value`` strings; the value is parsed with ``yaml.safe_load`` so
``x=3``, ``x=1e-4``, ``x=[1,2]``, ``x=null``, ``x=true`` and ``x={a: 1}`` work. Setting a key
inside a ``dict[str, ...]`` field creates or updates that entry; a numeric component indexes an
existing list entry (``objectives.0=itc``).

Errors raise :class:`ConfigError` naming the dotted key, where the value came from (the file,
or the command-line override), what was expected and what was received; for an unknown key, the
valid keys at that level and the closest matches. Free-form ``dict`` fields can be checked
against a dataclass with :func:`validate_section` from an ``Annotated[..., AfterValidator(...)]``
validator; errors raised there (and :class:`ConfigError`\\ s with a *relative* ``key``) are
reported under the full dotted key.

Modules: :mod:`~xfm.core.config.validation` (pydantic), :mod:`~xfm.core.config.errors` (the
messages), :mod:`~xfm.core.config.overrides`, :mod:`~xfm.core.config.files` (YAML and
``base:``), :mod:`~xfm.core.config.fields` (type helpers, :func:`to_dict`).

Example::

    @dataclass
    class Optim:
        lr: float = 1e-4
        betas: tuple[float, float] = (0.9, 0.999)
        accumulate: Annotated[int, Field(ge=1)] = 1

    @dataclass
    class Train:
        optim: Optim = field(default_factory=Optim)
        model: dict[str, Any] = field(default_factory=dict)
        precision: Literal["fp32", "bf16"] = "bf16"

    cfg = load_config(Train, "configs/tiny.yaml", ["optim.lr=3e-4", "model.text.layers=2"])
    save_config(cfg, "run/config.yaml")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from xfm.core.checkpoint.atomic import atomic_write
from xfm.core.config.errors import (
    OVERRIDE_SOURCE,
    ConfigError,
    UnknownKeyError,
    unknown_key_message,
)
from xfm.core.config.fields import _describe, _init_fields, _is_dataclass_type, to_dict
from xfm.core.config.files import BASE_KEY, read_config_file
from xfm.core.config.overrides import apply_overrides, parse_override
from xfm.core.config.validation import _validate, validate_section

__all__ = [
    "OVERRIDE_SOURCE",
    "ConfigError",
    "UnknownKeyError",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "read_config_file",
    "save_config",
    "to_dict",
    "unknown_key_message",
    "validate_section",
]

T = TypeVar("T")


def config_from_dict(
    cls: type[T],
    data: Mapping[str, Any] | None,
    *,
    source: str = "<dict>",
    overrides: Sequence[str] = (),
    origins: Mapping[str, str] | None = None,
) -> T:
    """Build a ``cls`` dataclass from raw data (e.g. parsed YAML), checking every key and value.

    Args:
        cls: the dataclass type.
        data: nested dicts/lists/scalars; ``None`` means empty (all defaults).
        source: how to name the data in error messages (a file name...).
        overrides: ``dotted.key=value`` strings applied on top.
        origins: dotted key -> source, for data merged from several files.

    Raises:
        ConfigError: for an unknown key, a wrong type, a missing required key or a violated
            constraint.
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
    raw, from_overrides = apply_overrides(cls, dict(data), overrides)
    context = {"before_overrides": data, "source": source}
    return _validate(cls, raw, source, {**(origins or {}), **from_overrides}, context)


def load_config(
    cls: type[T],
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> T:
    """Load a ``cls`` dataclass from a YAML file (path or fsspec URL; ``base:`` followed), a
    dict, or nothing (defaults), then apply ``dotted.key=value`` overrides.

    Raises:
        FileNotFoundError: when the file (or a base file) does not exist.
        ConfigError: for invalid YAML, an unknown key, a wrong type, a missing required key or
            a violated constraint; the message names the dotted key and the file or override it
            came from.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if source is None or isinstance(source, Mapping):
        return config_from_dict(cls, source, source="<dict>", overrides=overrides)
    name = os.fspath(source)
    follow = BASE_KEY not in _init_fields(cls) if _is_dataclass_type(cls) else True
    data, origins = read_config_file(name, storage_options=storage_options, follow_base=follow)
    return config_from_dict(cls, data, source=name, overrides=overrides, origins=origins)


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
