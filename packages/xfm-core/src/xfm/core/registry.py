"""Named registries of xfm components, filled from entry points and in-process registration.

Every kind of component (text encoders, vision encoders, objectives, ``xfm`` subcommands, ...)
has one :class:`Registry`. A registry finds its components in two ways:

* **Entry points** in the group ``xfm.<kind>``, declared by any installed distribution::

      [project.entry-points."xfm.vision_encoder"]
      beit_v2 = "xfm.vision.beit:BEiTv2"

  The entry points are *listed* the first time the registry is used, but the object behind an
  entry point is only imported when that name is requested with :meth:`Registry.get` (or
  :meth:`Registry.create`). Listing names (:meth:`Registry.names`, :meth:`Registry.entries`)
  never imports plugin code, so a broken or heavy plugin costs nothing until it is used.

* **In-process registration** with a decorator (handy in tests and notebooks)::

      @register("text_encoder", "tiny_bert")
      class TinyBert: ...

Typical use::

    from xfm.core import registry

    registry.available("vision_encoder")            # ['beit_v2', ...]
    encoder = registry.create("vision_encoder", "beit_v2", image_size=224)

Errors say what was asked for and what exists: an unknown name raises
:class:`UnknownComponentError` (a :class:`KeyError`) listing the available names and the closest
matches; an unknown kind raises :class:`UnknownKindError`; the same name declared by two
different distributions raises :class:`DuplicateComponentError` naming both when that name is
requested; an entry point whose import fails raises :class:`ComponentLoadError` (an
:class:`ImportError`) naming the distribution and the entry point.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, overload

__all__ = [
    "KINDS",
    "ComponentInfo",
    "ComponentLoadError",
    "DuplicateComponentError",
    "Registry",
    "RegistryError",
    "UnknownComponentError",
    "UnknownKindError",
    "available",
    "create",
    "entries",
    "get",
    "get_registry",
    "refresh",
    "register",
]

KINDS: Final[tuple[str, ...]] = (
    "text_encoder",
    "vision_encoder",
    "fusion_encoder",
    "model",
    "objective",
    "task",
    "data_source",
    "checkpoint_format",
    "cli",
)
"""The kinds of components xfm knows; kind ``k`` is discovered from entry-point group ``xfm.k``.

Each kind is looked up by name where it is used: ``text_encoder``/``vision_encoder``/
``fusion_encoder`` by the model from its ``text``/``vision``/``fusion`` specs, ``model`` by the
trainer (``model.name``), ``objective`` per source (``data.sources.<s>.objectives``), ``task``
by ``xfm finetune``/``xfm eval``, ``data_source`` by the data loader (``data.sources`` keys),
``checkpoint_format`` by the checkpoint loaders, ``cli`` by the ``xfm`` command."""

ENTRY_POINT_PREFIX: Final[str] = "xfm."
"""Prefix of the entry-point groups: kind ``text_encoder`` lives in group ``xfm.text_encoder``."""

SOURCE_ENTRY_POINT: Final[str] = "entry point"
SOURCE_IN_PROCESS: Final[str] = "in-process"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RegistryError(Exception):
    """Base class of every registry error; ``str(err)`` is the readable message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # KeyError's own __str__ would print the repr of the message (with quotes).
        return self.message


class UnknownKindError(RegistryError, KeyError):
    """A kind that is not one of :data:`KINDS` was asked for."""

    def __init__(self, kind: object, kinds: tuple[str, ...] = KINDS) -> None:
        self.kind = kind
        self.kinds = kinds
        close = difflib.get_close_matches(str(kind), kinds, n=3, cutoff=0.6)
        hint = f" Did you mean {_quoted(close, ' or ')}?" if close else ""
        super().__init__(
            f"Unknown component kind {kind!r}.{hint} Expected one of: {_quoted(kinds)}."
        )


class UnknownComponentError(RegistryError, KeyError):
    """A name that no installed distribution nor in-process registration provides.

    Attributes:
        kind: the registry kind, e.g. ``"text_encoder"``.
        name: the name that was asked for.
        available: every name the registry knows, sorted.
        suggestions: the closest matches among ``available`` (``difflib``).
    """

    def __init__(self, kind: str, name: str, available: list[str], group: str) -> None:
        self.kind = kind
        self.name = name
        self.available = available
        self.suggestions = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f" Did you mean {_quoted(self.suggestions, ' or ')}?" if self.suggestions else ""
        if available:
            known = f"Available {kind} components: {_quoted(available)}."
        else:
            known = (
                f"No {kind} components are registered: install a distribution that declares "
                f"entry points in group {group!r}, or register one with "
                f"@register({kind!r}, name)."
            )
        super().__init__(f"Unknown {kind} {name!r}.{hint} {known}")


class DuplicateComponentError(RegistryError, ValueError):
    """The same name is provided twice: by two distributions, or twice in-process.

    Attributes:
        kind: the registry kind.
        name: the contested name.
        providers: one line per provider, ``"<distribution> <version> (<value>)"``.
    """

    def __init__(self, kind: str, name: str, providers: list[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.providers = providers
        listed = "; ".join(providers)
        super().__init__(
            f"{kind} {name!r} is provided more than once: {listed}.{(' ' + hint) if hint else ''}"
        )


class ComponentLoadError(RegistryError, ImportError):
    """Importing the object behind an entry point failed; the original error is ``__cause__``."""

    def __init__(self, info: ComponentInfo, error: BaseException) -> None:
        self.info = info
        self.error = error
        super().__init__(
            f"Could not load {info.kind} {info.name!r} from entry point {info.value!r} of "
            f"distribution {info.provider}: {type(error).__name__}: {error}"
        )


def _quoted(names: list[str] | tuple[str, ...], sep: str = ", ") -> str:
    return sep.join(repr(n) for n in names)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentInfo:
    """What the registry knows about one component, without importing it.

    Attributes:
        kind: the registry kind, e.g. ``"vision_encoder"``.
        name: the registered name, e.g. ``"beit_v2"``.
        value: where the object lives, ``"module:attribute"``.
        distribution: the distribution declaring the entry point (``None`` when in-process).
        version: that distribution's version (``None`` when in-process or unknown).
        source: ``"entry point"`` or ``"in-process"``.
    """

    kind: str
    name: str
    value: str
    distribution: str | None
    version: str | None
    source: Literal["entry point", "in-process"]

    @property
    def provider(self) -> str:
        """Human-readable provider: ``"xfm-vision 0.1.0"`` or ``"in-process"``."""
        if self.distribution is None:
            return SOURCE_IN_PROCESS if self.source == SOURCE_IN_PROCESS else "unknown"
        return f"{self.distribution} {self.version}" if self.version else self.distribution


_MISSING: Any = object()


@dataclass
class _EntryPointRecord:
    """One discovered entry point and, once requested, the object it refers to."""

    info: ComponentInfo
    entry_point: importlib.metadata.EntryPoint
    loaded: Any = field(default=_MISSING)


@dataclass
class _InProcessRecord:
    info: ComponentInfo
    obj: Any


def _normalize_dist(name: str) -> str:
    """PEP 503 normalisation: ``XFM_Demo.plugin`` and ``xfm-demo-plugin`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _discover_entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """All entry points of ``group`` on the current ``sys.path`` (reads metadata, imports nothing)."""
    return list(importlib.metadata.entry_points(group=group))


def _object_path(obj: Any) -> str:
    """``"module:qualname"`` of an object, or its repr when it has none."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname:
        return f"{module}:{qualname}"
    return f"{type(obj).__module__}:{type(obj).__qualname__} instance"


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(
            f"{where}: a component name must be a non-empty string without surrounding "
            f"whitespace, got {name!r}."
        )
    return name


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


class Registry:
    """Components of one kind, by name.

    Entry points of ``group`` are listed on first use (under a lock) and imported only when
    their name is requested. In-process registrations take precedence over entry points only
    when made with ``override=True``.

    Args:
        kind: the kind of component, e.g. ``"text_encoder"``. Any non-empty string is accepted
            here (so tests can build private registries); :func:`get_registry` only hands out
            the registries of :data:`KINDS`.
        group: the entry-point group; defaults to ``"xfm.<kind>"``.
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = _check_name(kind, "Registry(kind=...)")
        self.group = group if group is not None else ENTRY_POINT_PREFIX + kind
        self._lock = threading.RLock()
        self._entry_points: dict[str, list[_EntryPointRecord]] | None = None
        self._in_process: dict[str, _InProcessRecord] = {}

    def __repr__(self) -> str:
        state = "not scanned" if self._entry_points is None else f"{len(self)} components"
        return f"Registry(kind={self.kind!r}, group={self.group!r}, {state})"

    # ----------------------------------------------------------------------- discovery

    def _scan(self) -> dict[str, list[_EntryPointRecord]]:
        """Entry points by name, listed once; the caller must hold ``self._lock``."""
        if self._entry_points is not None:
            return self._entry_points
        found: dict[str, list[_EntryPointRecord]] = {}
        seen: set[tuple[str, str, str]] = set()
        for ep in _discover_entry_points(self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            # The same distribution can be listed twice (an editable install next to stale
            # metadata, or a directory on sys.path twice): one component, not a conflict.
            key = (ep.name, _normalize_dist(dist_name or ""), ep.value)
            if key in seen:
                continue
            seen.add(key)
            info = ComponentInfo(
                kind=self.kind,
                name=ep.name,
                value=ep.value,
                distribution=dist_name,
                version=version,
                source=SOURCE_ENTRY_POINT,
            )
            found.setdefault(ep.name, []).append(_EntryPointRecord(info=info, entry_point=ep))
        self._entry_points = found
        return found

    def refresh(self) -> None:
        """Forget the listed entry points (and their loaded objects) and list them again lazily.

        Call this after installing or removing a distribution at run time.
        In-process registrations are kept.
        """
        importlib.invalidate_caches()
        with self._lock:
            self._entry_points = None

    # ----------------------------------------------------------------------- registration

    @overload
    def register(
        self, name: str | None = None, obj: None = None, *, override: bool = False
    ) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str | None, obj: T, *, override: bool = False) -> T: ...

    def register(self, name: str | None = None, obj: Any = None, *, override: bool = False) -> Any:
        """Register ``obj`` under ``name`` in this process.

        Used as a decorator (``@REG.register("bert")``; without a name the object's
        ``__name__`` is used) or called directly (``REG.register("bert", BertEncoder)``).

        Registering a name that is already registered in-process raises
        :class:`DuplicateComponentError` unless ``override=True`` (registering the very same
        object again is a no-op). A name also declared as an entry point is accepted when the
        entry point refers to this same object (``module:qualname`` match: the module that
        the entry point imports registers itself); otherwise it raises unless ``override=True``,
        in which case the in-process object shadows the entry point.

        Returns:
            The decorator, or ``obj`` itself when given.
        """
        if obj is None:

            def decorator(target: T) -> T:
                self._add(name, target, override=override)
                return target

            return decorator
        self._add(name, obj, override=override)
        return obj

    def _add(self, name: str | None, obj: Any, *, override: bool) -> None:
        if name is None:
            name = getattr(obj, "__name__", None)
            if name is None:
                raise ValueError(
                    f"Registry({self.kind!r}).register: no name given and {obj!r} has no "
                    "__name__; pass the name explicitly."
                )
        where = f"Registry({self.kind!r}).register"
        _check_name(name, where)
        path = _object_path(obj)
        info = ComponentInfo(
            kind=self.kind,
            name=name,
            value=path,
            distribution=None,
            version=None,
            source=SOURCE_IN_PROCESS,
        )
        with self._lock:
            existing = self._in_process.get(name)
            if existing is not None and not override:
                if existing.obj is obj:
                    return
                raise DuplicateComponentError(
                    self.kind,
                    name,
                    [f"in-process ({existing.info.value})", f"in-process ({path})"],
                    hint="Pass override=True to replace the first registration.",
                )
            records = self._scan().get(name, [])
            if records and not override:
                matching = [r for r in records if _matches(r.entry_point, obj)]
                if matching:
                    # The module behind the entry point registers its own object.
                    for record in matching:
                        record.loaded = obj
                    return
                raise DuplicateComponentError(
                    self.kind,
                    name,
                    [_describe(r.info) for r in records] + [f"in-process ({path})"],
                    hint="Pass override=True to shadow the entry point in this process.",
                )
            self._in_process[name] = _InProcessRecord(info=info, obj=obj)

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (entry points cannot be removed this way)."""
        with self._lock:
            if name not in self._in_process:
                raise UnknownComponentError(
                    self.kind, name, sorted(self._in_process), self.group
                ) from None
            del self._in_process[name]

    # ----------------------------------------------------------------------- lookup

    def names(self) -> list[str]:
        """Sorted names of every component; imports nothing."""
        with self._lock:
            return sorted(set(self._scan()) | set(self._in_process))

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._in_process or name in self._scan()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entries(self) -> list[ComponentInfo]:
        """One :class:`ComponentInfo` per provider, sorted by name; imports nothing.

        A name declared by two distributions appears twice (that is a conflict, see
        :meth:`conflicts`); an in-process registration made with ``override=True`` hides the
        entry points of the same name.
        """
        with self._lock:
            scanned = self._scan()
            out = [r.info for r in self._in_process.values()]
            for name, records in scanned.items():
                if name not in self._in_process:
                    out.extend(r.info for r in records)
        return sorted(out, key=lambda i: (i.name, i.distribution or "", i.value))

    def conflicts(self) -> dict[str, list[ComponentInfo]]:
        """Names declared by more than one distribution, with their providers."""
        with self._lock:
            scanned = self._scan()
            return {
                name: [r.info for r in records]
                for name, records in sorted(scanned.items())
                if len(records) > 1 and name not in self._in_process
            }

    def info(self, name: str) -> ComponentInfo:
        """The :class:`ComponentInfo` of ``name`` without importing it.

        Raises:
            UnknownComponentError: no such name.
            DuplicateComponentError: two distributions declare ``name``.
        """
        with self._lock:
            if name in self._in_process:
                return self._in_process[name].info
            return self._single_record(name).info

    def _single_record(self, name: str) -> _EntryPointRecord:
        """The entry-point record of ``name``; the caller must hold ``self._lock``."""
        records = self._scan().get(name)
        if not records:
            raise UnknownComponentError(self.kind, name, self.names(), self.group)
        if len(records) > 1:
            raise DuplicateComponentError(
                self.kind,
                name,
                [_describe(r.info) for r in records],
                hint=f"Uninstall one of them, or register the one to use with "
                f"register({self.kind!r}, {name!r}, obj, override=True).",
            )
        return records[0]

    def get(self, name: str) -> Any:
        """The object registered as ``name``, importing its entry point on first request.

        Raises:
            UnknownComponentError: no such name (the message lists what exists and the
                closest matches).
            DuplicateComponentError: two distributions declare ``name``.
            ComponentLoadError: importing the entry point failed.
        """
        if not isinstance(name, str):
            raise TypeError(
                f"Registry({self.kind!r}).get: expected a component name (str), got "
                f"{type(name).__name__} {name!r}."
            )
        with self._lock:
            in_process = self._in_process.get(name)
            if in_process is not None:
                return in_process.obj
            record = self._single_record(name)
            if record.loaded is not _MISSING:
                return record.loaded
        # Import outside the lock: the plugin module may register components itself, possibly
        # from another thread, and holding our lock across an import could deadlock.
        try:
            obj = record.entry_point.load()
        except Exception as exc:
            raise ComponentLoadError(record.info, exc) from exc
        with self._lock:
            if record.loaded is _MISSING:
                record.loaded = obj
            return record.loaded

    def create(self, name: str, /, **config: Any) -> Any:
        """``get(name)(**config)``, with a clear error when ``config`` does not fit.

        Raises:
            TypeError: the component is not callable, or ``config`` has keys its signature
                does not accept (or lacks required ones).
        """
        factory = self.get(name)
        if not callable(factory):
            raise TypeError(
                f"{self.kind} {name!r} ({_object_path(factory)}) is not callable, so it "
                f"cannot be created with a config; use get({self.kind!r}, {name!r})."
            )
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # builtins and some C types have no signature
            signature = None
        if signature is not None:
            try:
                signature.bind(**config)
            except TypeError as exc:
                params = [p for p in signature.parameters if p != "self"]
                raise TypeError(
                    f"Cannot create {self.kind} {name!r} ({_object_path(factory)}) with "
                    f"config keys {sorted(config)}: {exc}. It accepts: {params}."
                ) from None
        return factory(**config)


def _matches(ep: importlib.metadata.EntryPoint, obj: Any) -> bool:
    """Whether entry point ``ep`` refers to ``obj`` (same module and qualified name)."""
    return (
        ep.module == getattr(obj, "__module__", None)
        and ep.attr is not None
        and ep.attr == getattr(obj, "__qualname__", None)
    )


def _describe(info: ComponentInfo) -> str:
    return f"{info.provider} ({info.value})"


# --------------------------------------------------------------------------------------------
# One registry per kind, and module-level shortcuts
# --------------------------------------------------------------------------------------------

_REGISTRIES: Final[dict[str, Registry]] = {kind: Registry(kind) for kind in KINDS}


def get_registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`).

    Raises:
        UnknownKindError: ``kind`` is not one of :data:`KINDS`.
    """
    try:
        return _REGISTRIES[kind]
    except (KeyError, TypeError):
        raise UnknownKindError(kind) from None


@overload
def register(
    kind: str, name: str | None = None, obj: None = None, *, override: bool = False
) -> Callable[[T], T]: ...


@overload
def register(kind: str, name: str | None, obj: T, *, override: bool = False) -> T: ...


def register(kind: str, name: str | None = None, obj: Any = None, *, override: bool = False) -> Any:
    """Register ``obj`` as ``name`` in the ``kind`` registry; a decorator when ``obj`` is omitted.

    Example::

        @register("text_encoder", "tiny_bert")
        class TinyBert: ...

    See :meth:`Registry.register` for the duplicate rules.
    """
    return get_registry(kind).register(name, obj, override=override)


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` in the ``kind`` registry (see :meth:`Registry.get`)."""
    return get_registry(kind).get(name)


def create(kind: str, name: str, /, **config: Any) -> Any:
    """``get(kind, name)(**config)`` (see :meth:`Registry.create`)."""
    return get_registry(kind).create(name, **config)


def available(kind: str) -> list[str]:
    """Sorted names registered for ``kind``; imports no plugin module."""
    return get_registry(kind).names()


def entries(kind: str) -> list[ComponentInfo]:
    """:class:`ComponentInfo` of every component of ``kind``; imports no plugin module."""
    return get_registry(kind).entries()


def refresh(kind: str | None = None) -> None:
    """Re-list the entry points of ``kind`` (all kinds when ``None``) after (un)installing."""
    kinds = KINDS if kind is None else (get_registry(kind).kind,)
    for k in kinds:
        _REGISTRIES[k].refresh()
