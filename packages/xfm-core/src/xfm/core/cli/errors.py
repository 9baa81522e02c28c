"""Which exceptions are *user errors*: the ``xfm`` command prints them as one ``error:`` line.

A user error is a failure whose message tells the user everything they need (a corrupt
checkpoint, a bad config value, a missing shard, a full disk...): the ``xfm`` dispatcher
(:func:`xfm.core.cli.main.main`) prints ``error: <message>`` on stderr and exits with status 2,
without a traceback. Any other exception is a bug and keeps its traceback.

The list is extensible in two ways:

* subclass :class:`UserError` (for new exception classes of xfm packages and plugins);
* call :func:`register_user_error` with a class (or its dotted name, so that the class's module
  need not be imported) and optionally a predicate on the instance. Registering next to the
  class definition is always early enough: an instance can only be raised once its module was
  imported.

Classes are matched by their dotted name along the exception's MRO, so subclasses count too.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

__all__ = [
    "DEFAULT_USER_ERRORS",
    "PUBLIC_USER_ERRORS",
    "UserError",
    "format_user_error",
    "is_user_error",
    "register_user_error",
    "user_error_names",
]

Predicate = Callable[[BaseException], bool]


class UserError(Exception):
    """Base class of exceptions whose message is a complete, actionable error for the user."""


def _no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def _cuda_missing(exc: BaseException) -> bool:
    text = str(exc)
    return any(
        marker in text
        for marker in (
            "Torch not compiled with CUDA enabled",
            "Found no NVIDIA driver",
            "CUDA is not available",
            "no CUDA GPUs are available",
        )
    )


#: Built-in user errors of other modules, by their public import path ``module:Name``;
#: resolved (imported) only when an exception is being classified.
PUBLIC_USER_ERRORS: tuple[str, ...] = (
    "xfm.core.checkpoint:CheckpointError",  # corrupt, truncated, unsafe, foreign checkpoints
    "xfm.core.checkpoint:KeyMappingError",
    "xfm.core.config:ConfigError",
    "xfm.core.registry:RegistryError",  # unknown component or kind, duplicate, import
    "safetensors:SafetensorError",
)

#: Built-in user errors: dotted class name -> optional predicate on the instance.
DEFAULT_USER_ERRORS: dict[str, Predicate | None] = {
    "xfm.core.cli.errors.UserError": None,
    "builtins.FloatingPointError": None,  # a non-finite loss
    "builtins.FileNotFoundError": None,  # messages name the path
    "builtins.IsADirectoryError": None,
    "builtins.NotADirectoryError": None,
    "builtins.PermissionError": None,
    "builtins.OSError": _no_space,  # disk full / quota exceeded
    "builtins.RuntimeError": _cuda_missing,  # device=cuda without CUDA
    "builtins.AssertionError": _cuda_missing,  # torch's "Torch not compiled with CUDA enabled"
}

_REGISTRY: dict[str, list[Predicate | None]] = {k: [v] for k, v in DEFAULT_USER_ERRORS.items()}


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_user_error(cls: type[BaseException] | str, when: Predicate | None = None) -> None:
    """Declare ``cls`` (a class or its dotted name ``module.QualName``) a user error.

    Args:
        cls: the exception class; subclasses are included.
        when: only instances for which ``when(exc)`` is true count (e.g. an ``errno``).
    """
    name = cls if isinstance(cls, str) else _dotted(cls)
    preds = _REGISTRY.setdefault(name, [])
    if when not in preds:
        preds.append(when)


_resolved = False


def _resolve_public() -> None:
    """Register the classes of :data:`PUBLIC_USER_ERRORS` under their defining module's name
    (so that moving a class between modules cannot silently drop it from the list)."""
    global _resolved
    if _resolved:
        return
    _resolved = True
    import importlib

    for entry in PUBLIC_USER_ERRORS:
        module, _, name = entry.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:  # not installed: its errors cannot occur either
            continue
        register_user_error(cls)


def user_error_names() -> list[str]:
    """The dotted names of the registered user-error classes (sorted)."""
    _resolve_public()
    return sorted(_REGISTRY)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a registered user error (by class along its MRO, and predicate)."""
    _resolve_public()
    for cls in type(exc).__mro__:
        for pred in _REGISTRY.get(_dotted(cls), ()):
            if pred is None:
                return True
            try:
                if pred(exc):
                    return True
            except Exception:  # a faulty predicate must not hide the original error
                continue
    return False


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) adds quotes
    else:
        text = str(exc)
    if _no_space(exc):
        where = f" while writing {exc.filename!r}" if getattr(exc, "filename", None) else ""
        return f"no space left on device{where} ({text}); free some space and run again"
    return text.strip() or type(exc).__name__


def format_user_error(exc: BaseException) -> str:
    """``error: <message>`` for ``exc`` (the message may continue on indented lines)."""
    return f"error: {_message(exc)}"
