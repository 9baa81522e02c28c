"""Compare a state dict with a module and load it, with readable errors.

:func:`compare_state` looks only at names, shapes and dtypes, never at tensor data, so it works
for modules and state dicts on the ``meta`` device (e.g. a model built under
``torch.device("meta")`` against ``load_state_dict(url, map_location="meta")``, which for a
safetensors file reads only its header).

Dtypes: tensors whose dtype differs from the model's but is of the same kind (floating point,
integer, complex, bool) are cast to the model's dtype when loaded (``float16`` checkpoint into a
``float32`` model, ``int32`` into ``int64``) and listed in :attr:`LoadReport.casts`, with no
warning: the model's dtype is the user's choice. A change of kind (integer checkpoint entry for
a floating-point parameter...) almost always means a wrong mapping: it is reported as a
mismatch, raises with ``strict=True``, and is skipped with ``strict=False``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint.errors import CheckpointMismatchError
from xfm.core.checkpoint.io import load_state_dict
from xfm.core.checkpoint.keymap import KeyMapper
from xfm.core.checkpoint.report import DtypeMismatch, LoadReport, ShapeMismatch

__all__ = ["compare_state", "load_into"]

log = logging.getLogger(__name__)


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    if dtype == torch.bool:
        return "bool"
    return "int"


def _matcher(patterns: str | Sequence[str]) -> re.Pattern[str] | None:
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return re.compile("|".join(f"(?:{p})" for p in pats)) if pats else None


def compare_state(
    model: nn.Module | Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    mapper: KeyMapper | None = None,
    allow_missing: str | Sequence[str] = (),
    allow_unexpected: str | Sequence[str] = (),
) -> LoadReport:
    """Compare ``state`` (mapped with ``mapper`` if given) with a module's state dict.

    Only names, shapes and dtypes are read (meta tensors are fine).

    Args:
        model: a module, or the state dict it expects.
        state: the checkpoint's ``{name: tensor}`` dict.
        mapper: converts the checkpoint's names first.
        allow_missing / allow_unexpected: regular expressions (``re.search``) of keys that may
            be missing from / unexpected in the checkpoint without being an error.

    Returns:
        The :class:`LoadReport` (``loaded`` is empty).
    """
    expected = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    report = LoadReport()
    if mapper is not None:
        mapped = mapper.apply(state)
        state = mapped.state
        report.unmapped, report.dropped, report.origins = (
            mapped.unmapped,
            mapped.dropped,
            mapped.origins,
        )
    ok_missing = _matcher(allow_missing)
    ok_unexpected = _matcher(allow_unexpected)
    for key, ref in expected.items():
        if key not in state:
            if ok_missing is not None and ok_missing.search(key):
                report.ignored_missing.append(key)
            else:
                report.missing.append(key)
            continue
        got = state[key]
        if tuple(got.shape) != tuple(ref.shape):
            report.shape_mismatches.append(ShapeMismatch(key, tuple(got.shape), tuple(ref.shape)))
        elif got.dtype != ref.dtype:
            entry = DtypeMismatch(key, got.dtype, ref.dtype)
            if _kind(got.dtype) == _kind(ref.dtype):
                report.casts.append(entry)
            else:
                report.dtype_mismatches.append(entry)
    for key in state:
        if key not in expected:
            if ok_unexpected is not None and ok_unexpected.search(key):
                report.ignored_unexpected.append(key)
            else:
                report.unexpected.append(key)
    return report


def _describe_module(module: nn.Module) -> str:
    n = sum(1 for _ in module.state_dict())
    return f"{type(module).__module__}.{type(module).__qualname__} ({n} keys)"


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    *,
    strict: bool = True,
    mapper: KeyMapper | None = None,
    allow_missing: str | Sequence[str] = (),
    allow_unexpected: str | Sequence[str] = (),
    assign: bool = False,
    source: str | None = None,
    key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``module``, checking every key first.

    Args:
        module: the model to fill.
        state: a ``{name: tensor}`` dict, or a path/URL read with
            :func:`~xfm.core.checkpoint.io.load_state_dict` (with ``key`` and ``storage_options``).
        strict: raise :class:`CheckpointMismatchError` on any missing, unexpected, shape- or
            dtype-mismatched key (nothing is loaded then). With ``False``, load the keys that
            fit and return the report.
        mapper: converts the checkpoint's names first.
        allow_missing / allow_unexpected: regular expressions of keys that may be missing /
            unexpected even when ``strict`` (e.g. ``r"\\.relative_position_index$"``).
        assign: assign the checkpoint tensors instead of copying into the existing ones (for a
            module built on the ``meta`` device); they are cast to the model's dtype first.
        source: how to name the checkpoint in messages (default: the path, or ``<state dict>``).

    Returns:
        The :class:`LoadReport`; ``loaded`` lists the keys copied.

    Raises:
        CheckpointMismatchError: with ``strict=True`` when the report is not ``ok``; the message
            groups the keys by pattern and names the checkpoint and the model class.
    """
    if isinstance(state, str | os.PathLike):
        source = source or os.fspath(state)
        state = load_state_dict(state, key=key, storage_options=storage_options)
    mapped = mapper.apply(state) if mapper is not None else None
    if mapped is not None:
        state = mapped.state
    expected = module.state_dict()
    report = compare_state(
        expected, state, allow_missing=allow_missing, allow_unexpected=allow_unexpected
    )
    if mapped is not None:
        report.unmapped, report.dropped, report.origins = (
            mapped.unmapped,
            mapped.dropped,
            mapped.origins,
        )
    if strict and not report.ok:
        raise CheckpointMismatchError(
            report.format(source or "<state dict>", _describe_module(module)), report
        )
    skip = {m.key for m in report.shape_mismatches} | {m.key for m in report.dtype_mismatches}
    to_load: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in expected and name not in skip:
            ref = expected[name]
            to_load[name] = (
                tensor.to(ref.dtype) if (assign and tensor.dtype != ref.dtype) else tensor
            )
    module.load_state_dict(to_load, strict=False, assign=assign)
    report.loaded = list(to_load)
    if report.casts:
        log.info(
            "%s: %d tensor(s) cast to the model's dtype (e.g. %s: %s -> %s)",
            source or "checkpoint",
            len(report.casts),
            report.casts[0].key,
            report.casts[0].checkpoint_dtype,
            report.casts[0].model_dtype,
        )
    if not report.ok:
        log.warning(
            "loaded %s into %s non-strictly: %s",
            source or "<state dict>",
            type(module).__name__,
            report.summary(),
        )
    return report
