"""The official tensors that no model of this library computes with, for every layout, in one
place: kept aside on import, written back on export.

The official classes build more than they use:

* every layout (:data:`~xfm.fusion.official.UNUSED_OFFICIAL`, owned by the pretraining key
  mapping beside the model): ``fusion_proj`` (a ``Linear`` built whenever the vision width
  differs from the text width, never called), the captioning heads ``*.lm_cap_head``, the
  fusion encoder's embedding layer (it is fed the text states) and the ``position_ids``
  buffers;
* the layouts whose model has no fusion MLM head (VQA, GLUE, ImageNet):
  ``fusion_encoder.lm_head`` and the fusion word embeddings tied to it;
* GLUE: the whole vision and fusion encoders; ImageNet: the text and fusion encoders
  (:data:`DEAD_ENCODERS`).

On import these tensors go to ``model.official_extras`` (their names and values); on export
they are written back unchanged, so the round trip is bit-exact. A model that was never
imported gets freshly initialised tensors of the official shapes instead
(:func:`fresh_unused`). Imported weights saved as our safetensors keep them under the
:data:`EXTRAS_PREFIX` (see :func:`pack_extras` / :func:`unpack_extras`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.core.checkpoint import Drop, LoadReport, Rule
from xfm.fusion.official import UNUSED_OFFICIAL
from xfm.tasks.base import TaskModel

__all__ = [
    "DEAD_ENCODERS",
    "EXTRAS_PREFIX",
    "UNUSED",
    "build_companion",
    "companion_spec",
    "fresh_unused",
    "keep_extras",
    "merge_extras",
    "pack_extras",
    "unpack_extras",
    "unused_patterns",
    "unused_rules",
]

#: ``pattern: reason`` of the unused official tensors shared by every layout.
UNUSED: dict[str, str] = dict(UNUSED_OFFICIAL)

#: Extra unused patterns of the layouts whose models have no fusion MLM head.
NO_FUSION_MLM: dict[str, str] = {
    r"^fusion_encoder\.lm_head\.": "fusion MLM head: the task model never runs masked LM",
    r"^fusion_encoder\.roberta\.embeddings\.word_embeddings\.": (
        "fusion word embeddings: only tied to the fusion MLM decoder"
    ),
}

#: Official encoders a layout's model does not run at all.
DEAD_ENCODERS: dict[str, tuple[str, ...]] = {
    "glue": ("vision_encoder", "fusion_encoder"),
    "imagenet": ("text_encoder", "fusion_encoder"),
}

#: Prefix of the kept official tensors in our safetensors files (``import-official``).
EXTRAS_PREFIX = "official_extras."


def unused_patterns(layout: str, *, fusion_mlm: bool) -> list[str]:
    """The regexes of the official tensors ``layout``'s model does not use."""
    out = list(UNUSED)
    if not fusion_mlm:
        out += list(NO_FUSION_MLM)
    out += [rf"^{re.escape(p)}\." for p in DEAD_ENCODERS.get(layout, ())]
    return out


def unused_rules(layout: str, *, fusion_mlm: bool) -> list[Rule]:
    """:class:`~xfm.core.checkpoint.Drop` rules for :func:`unused_patterns` (import side)."""
    return [Drop(p) for p in unused_patterns(layout, fusion_mlm=fusion_mlm)]


def keep_extras(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    report: LoadReport,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Keep the official tensors the import dropped (``model.official_extras``) and the golden
    config (``model.official_config``): the export writes them back unchanged."""
    model.official_extras = {k: state[k].detach().clone() for k in report.dropped}
    model.official_config = dict(config) if config else {}


def pack_extras(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.official_extras`` under :data:`EXTRAS_PREFIX` (to save beside the weights)."""
    extras = getattr(model, "official_extras", None) or {}
    return {EXTRAS_PREFIX + k: v for k, v in extras.items()}


def unpack_extras(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a state dict into ``(weights, official extras)`` (the latter without prefix)."""
    weights = {k: v for k, v in state.items() if not k.startswith(EXTRAS_PREFIX)}
    extras = {k[len(EXTRAS_PREFIX) :]: v for k, v in state.items() if k.startswith(EXTRAS_PREFIX)}
    return weights, extras


def merge_extras(
    out: dict[str, torch.Tensor], model: nn.Module, fresh: Iterable[tuple[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Add the unused tensors to an exported state dict ``out``: the kept ones when ``model``
    was imported, else ``fresh`` (official-shaped stand-ins). Live tensors are never replaced."""
    extras = getattr(model, "official_extras", None)
    for key, value in extras.items() if extras else fresh:
        out.setdefault(key, value)
    return out


# ------------------------------------------------------------ fresh stand-ins (never imported)


class _Companion(TaskModel):
    """An X-FM with the fusion MLM head: the source of official-shaped unused tensors."""

    keep_heads: ClassVar[tuple[str, ...]] = ("fusion_mlm_head",)


def companion_spec(
    own: Mapping[str, Mapping[str, Any]], official_spec: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The X-FM spec of the official model: ``own`` encoder specs (``text`` / ``vision`` /
    ``fusion`` of the model) over ``official_spec`` (the official model's other encoders;
    missing entries take the :class:`~xfm.fusion.model.XFMConfig` defaults)."""
    spec: dict[str, Any] = {
        k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (official_spec or {}).items()
    }
    spec.update({k: dict(v) for k, v in own.items()})
    # the official fusion encoder is built from the text encoder's RoBERTa json
    fusion = spec.setdefault("fusion", {"name": "cross_attention"})
    text = spec.get("text", {})
    for name in ("heads", "ffn_dim", "layer_norm_eps"):
        if name in text:
            fusion.setdefault(name, text[name])
    return spec


def build_companion(spec: Mapping[str, Any]) -> TaskModel:
    """The companion X-FM of ``spec``. A text encoder of 0 layers (official ImageNet
    checkpoints: embeddings only) is built with one layer, flagged ``zero_text_layers``."""
    zero = int(spec.get("text", {}).get("layers", 1)) == 0
    if zero:
        spec = {**spec, "text": {**spec["text"], "layers": 1}}
    companion = _Companion(dict(spec))
    companion.zero_text_layers = zero
    return companion


def fresh_unused(
    model: nn.Module, own: Mapping[str, Mapping[str, Any]], official_spec: Mapping[str, Any] | None
) -> dict[str, torch.Tensor]:
    """Official-shaped stand-ins for every tensor of the official task model, from a companion
    X-FM sharing ``model``'s encoders (exported with the task text prefix)."""
    from xfm.fusion.official import to_official

    with torch.device(next(model.parameters()).device):
        companion = build_companion(companion_spec(own, official_spec))
    for name in ("vision_encoder", "text_encoder", "fusion_encoder"):
        mine = getattr(model, name, None)
        if mine is not None:
            setattr(companion, name, mine)
    out = to_official(companion, text_prefix="text_encoder.")
    return {
        k: v
        for k, v in out.items()
        if not re.match(r"^text_encoder\.(?:lm_head|lm_cap_head)\.", k)
        and not (companion.zero_text_layers and k.startswith("text_encoder.encoder.layer."))
    }
