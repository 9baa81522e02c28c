"""Lazily imported package attributes (PEP 562), for packages whose optional parts import heavy
libraries (torchvision, mosaicml-streaming) that most users of the package never need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``names[attr]`` (a module)
    on first access of ``attr`` and cache the value in the package's ``namespace``.

    Usage, in a package ``__init__``::

        __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Loader": "pkg.loader"})
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
