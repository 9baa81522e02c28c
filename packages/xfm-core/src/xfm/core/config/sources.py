"""Where config data comes from: YAML files (local paths or fsspec URLs, following ``base:``)
and ``dotted.key=value`` command-line overrides, with the source of every key."""

from __future__ import annotations

import copy
import dataclasses
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from xfm.core.checkpoint.storage import read_bytes
from xfm.core.config.errors import OVERRIDE_SOURCE, ConfigError, describe
from xfm.core.config.fields import child_type, is_dataclass_type, strip, to_dict

BASE_KEY = "base"


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merge(out[key], value) if both else value
    return out


def _leaves(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, str]:
    """``{dotted key: source}`` for every value of ``data`` but non-empty mappings."""
    out: dict[str, str] = {}
    for k, v in data.items():
        nested = isinstance(v, Mapping) and v
        out.update(_leaves(v, source, f"{prefix}{k}.") if nested else {f"{prefix}{k}": source})
    return out


def read_config_file(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    _chain: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a YAML config file (path or fsspec URL) and the ``base:`` files it starts from (a
    path relative to the including file, or a URL); mappings merge key by key.

    Returns:
        The merged data (without ``base``) and, per dotted key, the file of the chain it came
        from (empty without a chain).

    Raises:
        FileNotFoundError: a file of the chain does not exist.
        ConfigError: invalid YAML, not a mapping, a bad ``base`` value, or a cycle.
    """
    name = os.fspath(path)
    ident = name if "://" in name else os.path.abspath(name)
    if ident in _chain:
        cycle = " -> ".join((*_chain, ident))
        raise ConfigError(f"{name}: the 'base' files form a cycle: {cycle}", key=BASE_KEY)
    try:
        data = yaml.safe_load(read_bytes(name, storage_options=storage_options).decode())
    except FileNotFoundError as e:
        via = f" (the base of {_chain[-1]})" if _chain else ""
        raise FileNotFoundError(f"config file {name!r} does not exist{via}") from e
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{name}: invalid YAML: {e}", source=name) from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        problem = f"expected a mapping of config keys at the top level, got {describe(data)}"
        raise ConfigError(f"{name}: {problem}", source=name)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data, _leaves(data, name) if _chain else {}
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"{name}: invalid value for 'base': expected a file name or URL, got {describe(base)}",
            key=BASE_KEY,
            source=name,
        )
    if "://" not in base and not os.path.isabs(base):
        paths = posixpath if "://" in name else os.path
        base = paths.join(paths.dirname(name), base)
    parent, origins = read_config_file(
        base, storage_options=storage_options, _chain=(*_chain, ident)
    )
    return _merge(parent, data), {**origins, **_leaves(data, name)}


def source_of(key: str, origins: Mapping[str, str], default: str) -> str:
    """Where dotted ``key`` came from: its or an enclosing key's source, else (a section) the
    last source of a key inside it (overrides come last), else ``default``."""
    parts = key.split(".")
    enclosing = [origins.get(".".join(parts[:n])) for n in range(len(parts), 0, -1)]
    below = [s for k, s in origins.items() if k.startswith(f"{key}.")]
    return next(filter(None, enclosing), None) or (below or [default])[-1]


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", value)``, the value parsed by ``yaml.safe_load``.

    Raises:
        ConfigError: no ``=``, an empty key part, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    try:
        if sep and key and all(key.split(".")):
            return key, yaml.safe_load(raw) if raw.strip() else ""
        problem = "expected 'dotted.key=value' (e.g. optim.lr=1e-4)"
    except yaml.YAMLError as e:
        problem = f"the value is not valid YAML: {e}"
    raise ConfigError(f"{OVERRIDE_SOURCE} {text!r}: {problem}", key=key, source=OVERRIDE_SOURCE)


def _default(tp: Any, name: Any) -> Any:
    """The default of field ``name`` of dataclass ``tp`` as plain data when it is a mapping or a
    list, else ``{}`` (validation fills the defaults of a dataclass's absent fields)."""
    field = {f.name: f for f in dataclasses.fields(tp)}.get(name) if is_dataclass_type(tp) else None
    factory = getattr(field, "default_factory", dataclasses.MISSING)
    value = to_dict(
        factory() if factory is not dataclasses.MISSING else getattr(field, "default", None)
    )
    return value if isinstance(value, dict | list) else {}


def apply_overrides(
    cls: type, data: Mapping[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply ``a.b=c`` overrides to (a copy of) raw config data; validation checks the keys. A
    key inside an absent section starts from its default; a number indexes a list item.

    Returns:
        The updated data and, per overridden dotted key, the override it came from.

    Raises:
        ConfigError: a malformed override, or a key below a single value or past a list's end.
    """
    data, origins = copy.deepcopy(dict(data)), {}
    for text in overrides:
        key, value = parse_override(text)
        origins[key] = source = f"{OVERRIDE_SOURCE} {text!r}"
        node, tp, parts = data, cls, key.split(".")
        for i, part in enumerate(parts):
            parent, here = ".".join(parts[:i]), ".".join(parts[: i + 1])
            if isinstance(node, list) and not (part.isdigit() and int(part) < len(node)):
                problem = f"'{parent}' is a list of {len(node)} item(s); cannot set '{here}' (use "
                problem += f"{parent}=[...] to replace the list)"
            elif not isinstance(node, list | dict):
                problem = f"cannot set '{here}': '{parent}' holds a single value "
                problem += f"({describe(node)}), not a section with keys"
            else:
                index: Any = int(part) if isinstance(node, list) else part
                if i == len(parts) - 1:
                    node[index] = value
                elif (node[index] if isinstance(node, list) else node.get(index)) is None:
                    node[index] = _default(strip(tp), index)
                node, tp = node[index], child_type(tp, index)
                continue
            raise ConfigError(f"{source}: {problem}", key=here, source=source)
    return data, origins
