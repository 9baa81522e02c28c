"""Reading YAML config files (local paths or fsspec URLs) and following their ``base:`` chain."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

import yaml

from xfm.core.checkpoint.storage import read_bytes
from xfm.core.config.errors import ConfigError
from xfm.core.config.fields import _describe

__all__ = ["BASE_KEY", "read_config_file"]

BASE_KEY = "base"


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaf_origins(data: Any, source: str, prefix: str, out: dict[str, str]) -> None:
    """``out[dotted key] = source`` for every non-mapping value (and empty mapping) of data."""
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            _leaf_origins(v, source, key, out)
        else:
            out[key] = source


def _resolve_base(base: str, including: str) -> str:
    if "://" in base or os.path.isabs(base):
        return base
    if "://" in including:
        return posixpath.join(posixpath.dirname(including), base)
    return os.path.join(os.path.dirname(including), base)


def read_config_file(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    follow_base: bool = True,
    _chain: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a YAML config file (path or fsspec URL), following its ``base:`` chain.

    Returns:
        The merged data (without ``base``) and, per dotted key, the file it came from.

    Raises:
        FileNotFoundError: a file of the chain does not exist.
        ConfigError: invalid YAML, not a mapping, a bad ``base`` value, or a cycle.
    """
    name = os.fspath(path)
    ident = name if "://" in name else os.path.abspath(name)
    if ident in _chain:
        cycle = " -> ".join((*_chain, ident))
        raise ConfigError(
            f"{name}: the 'base' files form a cycle: {cycle}", key=BASE_KEY, source=name
        )
    try:
        text = read_bytes(name, storage_options=storage_options).decode("utf-8")
    except FileNotFoundError as e:
        via = f" (the base of {_chain[-1]})" if _chain else ""
        raise FileNotFoundError(f"config file {name!r} does not exist{via}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not a UTF-8 text file: {e}", source=name) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}", source=name) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: expected a mapping of config keys at the top level, got {_describe(data)}",
            source=name,
        )
    origins: dict[str, str] = {}
    base = data.pop(BASE_KEY, None) if follow_base else None
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(
                f"{name}: invalid value for 'base': expected a file name or URL, got "
                f"{_describe(base)}",
                key=BASE_KEY,
                source=name,
            )
        parent, origins = read_config_file(
            _resolve_base(base, name), storage_options=storage_options, _chain=(*_chain, ident)
        )
        own, data = data, _merge(parent, data)
        _leaf_origins(own, name, "", origins)
    elif _chain:  # the root of a base chain
        _leaf_origins(data, name, "", origins)
    return data, origins
