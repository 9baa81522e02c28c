"""Typed configuration: dataclasses filled from YAML files, dicts and ``a.b=c`` overrides.

:func:`load_config` reads a YAML file (local path or fsspec URL) and the ``base:`` files it
starts from, applies ``dotted.key=value`` overrides (values parsed as YAML; into ``dict`` fields
and list items too; see :mod:`~xfm.core.config.sources`) and validates the result with
`pydantic <https://docs.pydantic.dev>`_ v2 in strict mode against the dataclass's annotations
(``Annotated[int, Field(ge=1)]`` bounds, validators and ``__post_init__`` checks included).
Strict means YAML's own types: ``true`` is never a number, ``3`` never a string; the YAML 1.1
quirks are converted: ``1e-4`` (a string to PyYAML) is a float, ``1e5`` an int, and an enum
takes its members' names too (see :mod:`~xfm.core.config.validation`).

Every problem raises one :class:`ConfigError` naming the dotted key, where the value came from
(the file of the ``base:`` chain, or the override), what was expected and what was received,
or, for an unknown key, the valid keys and the closest matches. A free-form ``dict`` field can
be checked against a dataclass by :func:`validate_section` in an ``AfterValidator``.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-4
        accumulate: Annotated[int, Field(ge=1)] = 1

    @dataclass
    class Train:
        optim: Optim = field(default_factory=Optim)
        precision: Literal["fp32", "bf16"] = "bf16"

    cfg = load_config(Train, "configs/tiny.yaml", ["optim.lr=3e-4"])
    save_config(cfg, "run/config.yaml")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from xfm.core.checkpoint.atomic import atomic_write
from xfm.core.config.errors import ConfigError, UnknownKeyError
from xfm.core.config.fields import is_dataclass_type, to_dict
from xfm.core.config.sources import apply_overrides, parse_override, read_config_file, source_of
from xfm.core.config.validation import InvalidConfig, validate, validate_section

__all__ = [
    "ConfigError",
    "UnknownKeyError",
    "config_from_dict",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
    "validate_section",
]

T = TypeVar("T")


def load_config(
    cls: type[T],
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> T:
    """Load dataclass ``cls`` from a YAML file (path or fsspec URL), raw data (a dict) or nothing
    (defaults), then apply ``dotted.key=value`` overrides.

    Raises:
        FileNotFoundError: the file (or a base file) does not exist.
        ConfigError: invalid YAML, an unknown key, a wrong type, a missing key or a violated
            constraint; the message names the dotted key and the file or override.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    if not is_dataclass_type(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    name, data, origins = "<dict>", {} if source is None else source, {}
    if not isinstance(data, Mapping):
        name = os.fspath(data)
        data, origins = read_config_file(name, storage_options=storage_options)
    raw, from_overrides = apply_overrides(cls, data, overrides)
    try:
        return validate(cls, raw, {"before_overrides": data, "source": name})
    except InvalidConfig as e:
        key, message = e.explain("")
        where = source_of(key, {**origins, **from_overrides}, name)
        raise ConfigError(f"{where}: {message}", key=key, source=where) from None
    except TypeError as e:  # __post_init__ raising TypeError: pydantic does not wrap it
        raise ConfigError(f"{name}: invalid config ({cls.__name__}): {e}", source=name) from e


def config_from_dict(
    cls: type[T], data: Mapping[str, Any] | None, overrides: Sequence[str] = ()
) -> T:
    """:func:`load_config` from raw data (e.g. parsed YAML; ``None``: all defaults)."""
    return load_config(cls, {} if data is None else data, overrides)


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
