"""``dotted.key=value`` overrides, applied to raw config data with their keys checked against
the config dataclass."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, get_origin

import yaml

from xfm.core.config.errors import OVERRIDE_SOURCE, ConfigError, unknown_key_message
from xfm.core.config.fields import (
    _child_type,
    _describe,
    _init_fields,
    _is_dataclass_type,
    _strip,
    _type_name,
    to_dict,
)

__all__ = ["apply_overrides", "parse_override"]


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
    if f.default is not dataclasses.MISSING:
        default = copy.deepcopy(f.default)
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return {}
    return {} if default is None else to_dict(default)


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

        def fail(here: str, message: str, source: str = source) -> ConfigError:
            return ConfigError(f"{source}: {message}", key=here, source=source)

        parts = key.split(".")
        node: Any = data
        tp: Any = cls
        for i, part in enumerate(parts):
            here, parent = ".".join(parts[: i + 1]), ".".join(parts[:i])
            tp = _strip(tp)
            child_field: dataclasses.Field[Any] | None = None
            if isinstance(node, list) and (get_origin(tp) in (list, tuple) or tp in (list, tuple)):
                if not (part.isdigit() and int(part) < len(node)):
                    raise fail(
                        here,
                        f"'{parent}' is a list of {len(node)} item(s); cannot set '{here}' "
                        f"(use {parent}=[...] to replace the list)",
                    )
                idx = int(part)
                if i == len(parts) - 1:
                    node[idx] = value
                    break
                if node[idx] is None:
                    node[idx] = {}
                node, tp = node[idx], _child_type(tp, idx) or Any
                continue
            if _is_dataclass_type(tp):
                fields = _init_fields(tp)
                if part not in fields:
                    raise fail(here, unknown_key_message(here, parent, part, list(fields)))
                child_field = fields[part]
            elif get_origin(tp) in (list, tuple) or tp in (list, tuple):
                raise fail(
                    here,
                    f"'{parent}' is a list of 0 item(s); cannot set '{here}' "
                    f"(use {parent}=[...] to replace the list)",
                )
            elif not (tp is Any or get_origin(tp) in (dict, Mapping) or tp is dict):
                raise fail(
                    here,
                    f"cannot set '{here}': '{parent}' holds a single value "
                    f"({_type_name(tp)}), not a section with keys",
                )
            if not isinstance(node, dict):
                raise fail(
                    here, f"cannot set '{here}': '{parent}' holds {_describe(node)}, not a mapping"
                )
            if i == len(parts) - 1:
                node[part] = value
                break
            if node.get(part) is None:
                node[part] = _seed(child_field)
            node, tp = node[part], _child_type(tp, part) or Any
        origins[key] = source
    return data, origins
