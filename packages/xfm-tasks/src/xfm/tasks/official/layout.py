"""The protocol every official X-FM layout implements, and the registry that finds them.

A layout is one object per official model class (``XFM`` pretraining, ``XFMForRetrieval``,
``XFMForNLVR``, ``XFMForGrounding``, ``XFMForVQA``, ``XFMForClassification`` for GLUE and for
ImageNet). Each is registered under the ``checkpoint_format`` kind of :mod:`xfm.core.registry`
(entry points ``[project.entry-points."xfm.checkpoint_format"]`` of xfm-tasks, named
``official_<layout>``), and that registry drives ``xfm check-official``, ``xfm import-official``
and ``xfm export-official``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.core.checkpoint import CheckpointError, LoadReport
from xfm.core.registry import available, get

__all__ = [
    "REGISTRY_PREFIX",
    "OfficialLayout",
    "detect_layout",
    "get_layout",
    "layout_for_golden",
    "layout_names",
    "layout_of_model",
    "layouts",
]

#: Registry names are ``official_<layout name>``.
REGISTRY_PREFIX = "official_"


class OfficialLayout:
    """One official checkpoint layout. Subclasses set the class attributes and implement:

    * :meth:`model_from_golden`: our model of a golden ``config.json`` (official dimensions);
    * :meth:`model_from_config`: our model of our config dict (``xfm_model_config`` metadata)
      and its weights (heads sized from them);
    * :meth:`import_state`: official state dict -> the model (unused tensors kept);
    * :meth:`export_state`: the model -> the official state dict (``strict=True`` loadable);
    * :meth:`golden_config`: a golden ``config.json`` describing the model;
    * :meth:`model_config`: our config dict of the model (what :meth:`model_from_config` reads);
    * :meth:`golden_outputs`: ``(computed, skipped)`` outputs of golden ``inputs``.

    Attributes:
        name: layout name (``--task`` of the commands).
        task: the registered ``xfm.task`` whose models use this layout (``None``: pretraining).
        golden_names: ``task`` values of golden ``config.json`` files of this layout.
        official_class: the official class.
        marker_keys: regexes: a state dict has this layout when each matches some key.
        absent_keys: regexes no key of this layout matches.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str | None] = None
    golden_names: ClassVar[tuple[str, ...]] = ()
    official_class: ClassVar[str] = ""
    marker_keys: ClassVar[tuple[str, ...]] = ()
    absent_keys: ClassVar[tuple[str, ...]] = ()

    # ----------------------------------------------------------------- detection
    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` is one of this layout's models."""
        raise NotImplementedError

    def matches(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether an official state dict has this layout (by its names; shapes may count)."""
        keys = list(state)
        return all(any(re.search(p, k) for k in keys) for p in self.marker_keys) and not any(
            re.search(p, k) for p in self.absent_keys for k in keys
        )

    def check_family(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """``CheckpointError`` naming what ``state`` is when it is not of this layout."""
        if self.matches(state):
            return
        found = [lay for lay in layouts() if lay.matches(state)]
        what = (
            f"an official {found[0].name} checkpoint ({found[0].official_class})"
            if len(found) == 1
            else "no official X-FM checkpoint of a known layout"
        )
        need = ", ".join(self.marker_keys)
        raise CheckpointError(
            f"{source} holds {what}, not {self.name} ({self.official_class}: keys matching "
            f"{need}{'; none matching ' + ', '.join(self.absent_keys) if self.absent_keys else ''})"
        )

    # --------------------------------------------------------------------- build
    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        """Our model (fresh weights) of a golden ``config.json``; ``state`` (the official
        weights, when at hand) sizes what the config does not give (classification heads)."""
        raise NotImplementedError

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        """Our model (fresh weights) of our config dict; ``state``: our weights (heads)."""
        raise NotImplementedError

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        """Our config dict of ``model`` (what :meth:`model_from_config` reads back)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- weights
    def import_state(
        self,
        model: nn.Module,
        state: Mapping[str, torch.Tensor],
        *,
        strict: bool = True,
        source: str = "<official state dict>",
        golden: Mapping[str, Any] | None = None,
    ) -> LoadReport:
        """Load an official state dict into ``model``; the tensors it does not use go to
        ``model.official_extras``, ``golden`` (the golden config) to ``model.official_config``.

        Raises:
            CheckpointError: (``strict``) the state dict is of another layout (named).
            CheckpointMismatchError: (``strict``) keys that do not fit, grouped.
        """
        raise NotImplementedError

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model`` as the official state dict (``strict=True`` loadable into the official
        class of the same dimensions; tied tensors share storage)."""
        raise NotImplementedError

    def golden_config(self, model: nn.Module) -> dict[str, Any]:
        """A golden-format ``config.json`` dict describing ``model`` (the imported one, if any)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- golden
    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """``(computed, {output: reason it is not computed})`` for a golden ``inputs``
        (names of ``outputs.safetensors``); ``model`` has the official weights imported."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers
    def load_golden(
        self,
        golden: Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
        source: str = "<official state dict>",
    ) -> nn.Module:
        """Our model of ``golden`` with the official ``state`` loaded strictly, in eval mode."""
        model = self.model_from_golden(golden, state)
        self.import_state(model, state, strict=True, source=source, golden=golden)
        return model.eval()


def layout_names() -> list[str]:
    """Names of the registered official layouts (``pretrain``, ``retrieval``, ...)."""
    return [
        n[len(REGISTRY_PREFIX) :]
        for n in available("checkpoint_format")
        if n.startswith(REGISTRY_PREFIX)
    ]


def get_layout(name: str) -> OfficialLayout:
    """The registered layout ``name`` (``ValueError`` listing the known ones)."""
    if name not in layout_names():
        raise ValueError(f"no official layout {name!r}; known: {', '.join(layout_names())}")
    return get("checkpoint_format", REGISTRY_PREFIX + name)()


def layouts() -> list[OfficialLayout]:
    """Every registered layout."""
    return [get_layout(n) for n in layout_names()]


def layout_for_golden(golden: Mapping[str, Any]) -> OfficialLayout:
    """The layout of a golden ``config.json`` (its ``task``; none = pretraining)."""
    task = str(golden.get("task", "pretrain"))
    for layout in layouts():
        if task in layout.golden_names:
            return layout
    known = sorted(n for lay in layouts() for n in lay.golden_names)
    raise NotImplementedError(
        f"no official layout reproduces golden task {task!r} (known: {known})"
    )


def layout_of_model(model: nn.Module) -> OfficialLayout:
    """The layout whose models include ``model`` (``TypeError`` when none)."""
    for layout in layouts():
        if layout.owns(model):
            return layout
    raise TypeError(f"no official layout for a {type(model).__name__}")


def detect_layout(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> OfficialLayout:
    """The one layout an official state dict has."""
    found = [lay for lay in layouts() if lay.matches(state)]
    if len(found) == 1:
        return found[0]
    tops = sorted({k.split(".", 1)[0] for k in state})
    if not found:
        raise CheckpointError(
            f"{source} is no official X-FM checkpoint of a known layout (top-level names "
            f"found: {tops[:12]}); give --task"
        )
    raise CheckpointError(
        f"{source} fits the official layouts {[lay.name for lay in found]}; give --task"
    )
