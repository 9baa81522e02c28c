"""Export VQA / GLUE / ImageNet task models back to the official X-FM task layout.

The inverse of the importers (:func:`~xfm.tasks.vqa_model.load_official_vqa`,
:func:`~xfm.tasks.classification.load_official_glue`,
:func:`~xfm.tasks.classification.load_official_imagenet`). An exported state dict loads with
``strict=True`` into the official class of the same dimensions (``XFMForVQA``,
``XFMForClassification``), and an imported checkpoint exports back bit-exactly.

Three kinds of official tensors:

* **live**: the model's own weights, renamed by the *inverse* of the import
  :class:`~xfm.core.checkpoint.KeyMapper` (its plain renames; the import-only ``Drop`` rules,
  the shared-table ``Split`` and the resizing ``Transform`` s have nothing to undo);
* **derived**: buffers and tied aliases of live weights, recomputed (``relative_position_index``
  of the vision blocks, ``position_ids`` of the text encoder / decoder,
  ``text_decoder.lm_head.decoder.bias`` = ``text_decoder.lm_head.bias``);
* **dead**: tensors the official class carries but our model does not run (GLUE: the vision
  and fusion encoders; ImageNet: the text and fusion encoders; all: the fusion embeddings,
  ``lm_head`` / ``lm_cap_head``, ``fusion_proj``). The importers keep them aside
  (``model.official_extras``) and they are written back unchanged. A model that was never
  imported gets freshly initialised tensors of the official shapes instead, from a companion
  X-FM built from the model's own encoder specs plus ``official_spec`` for the encoders the
  model does not have (dimensions of the official model, e.g. the vision tower of a GLUE
  checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.core.checkpoint import KeyMapper, Rename
from xfm.tasks.base import TaskModel
from xfm.tasks.classification import (
    ImageClassifier,
    TextClassifier,
    glue_key_mapper,
    imagenet_key_mapper,
)
from xfm.tasks.vqa_model import VQAModel, official_key_mapper

__all__ = [
    "export_official_classification_dir",
    "official_config_of",
    "official_layout_of",
    "to_official_classification",
]


class _Companion(TaskModel):
    """An X-FM with the fusion MLM head: the source of the dead official tensors."""

    keep_heads: ClassVar[tuple[str, ...]] = ("fusion_mlm_head",)


def official_layout_of(model: nn.Module) -> str:
    """``vqa``, ``classification_glue`` or ``classification_imagenet`` (``TypeError`` else)."""
    if isinstance(model, VQAModel):
        return "vqa"
    if isinstance(model, TextClassifier):
        return "classification_glue"
    if isinstance(model, ImageClassifier):
        if not isinstance(model.cls_head, nn.Sequential):
            raise TypeError(
                "only the deep-head ImageClassifier (ImageNet fine-tuning) has an official "
                "layout; a linear probe has none"
            )
        return "classification_imagenet"
    raise TypeError(
        f"no official VQA / classification layout for {type(model).__name__}; expected "
        "VQAModel, TextClassifier or ImageClassifier"
    )


def _import_mapper(model: nn.Module) -> KeyMapper:
    if isinstance(model, VQAModel):
        return official_key_mapper(model)
    if isinstance(model, TextClassifier):
        return glue_key_mapper()
    return imagenet_key_mapper(model)  # type: ignore[arg-type]


def _export_mapper(model: nn.Module) -> KeyMapper:
    """The inverse of the import mapper's renames (ours -> official names)."""
    renames = [r for r in _import_mapper(model).rules if type(r) is Rename]
    return KeyMapper(renames, name="official-task").inverse()


def _derived(model: nn.Module, out: dict[str, torch.Tensor]) -> None:
    """Buffers and tied aliases of the live weights (added to ``out`` in place)."""
    from xfm.vision.rel_pos import relative_position_index

    vision = getattr(model, "vision_encoder", None)
    if vision is not None:
        index = relative_position_index(vision.grid, device=vision.cls_token.device)
        if vision.config.rel_pos == "per_block":
            for i in range(vision.config.layers):
                out[f"vision_encoder.blocks.{i}.attn.relative_position_index"] = index
        elif vision.config.rel_pos == "shared":
            out["vision_encoder.rel_pos_bias.relative_position_index"] = index
    text = getattr(model, "text_encoder", None)
    if text is not None:
        device = next(text.parameters()).device
        ids = torch.arange(text.config.max_positions, device=device).unsqueeze(0)
        out["text_encoder.embeddings.position_ids"] = ids
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None:
        bias = out["text_decoder.lm_head.bias"]
        out["text_decoder.lm_head.decoder.bias"] = bias
        ids = torch.arange(decoder.config.max_positions, device=bias.device).unsqueeze(0)
        out["text_decoder.roberta.embeddings.position_ids"] = ids


def _own_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The registry specs of the encoders ``model`` has (``text`` / ``vision`` / ``fusion``)."""
    if isinstance(model, VQAModel):
        return {
            "text": dict(model.config.text),
            "vision": dict(model.config.vision),
            "fusion": dict(model.config.fusion),
        }
    return {k: dict(v) for k, v in getattr(model, "encoder_specs", {}).items()}


def _companion_spec(model: nn.Module, official_spec: Mapping[str, Any] | None) -> dict:
    spec: dict[str, Any] = {
        k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (official_spec or {}).items()
    }
    spec.update(_own_specs(model))
    # the official fusion encoder is built from the text encoder's RoBERTa json
    fusion = spec.setdefault("fusion", {"name": "cross_attention"})
    text = spec.get("text", {})
    for name in ("heads", "ffn_dim", "layer_norm_eps"):
        if name in text:
            fusion.setdefault(name, text[name])
    return spec


def _build(spec: dict[str, Any]) -> _Companion:
    """The companion of ``spec``. A text encoder of 0 layers (official ImageNet checkpoints:
    embeddings only) is built with one layer, flagged ``zero_text_layers`` so that the export
    leaves that layer out."""
    zero = int(spec.get("text", {}).get("layers", 1)) == 0
    if zero:
        spec = {**spec, "text": {**spec["text"], "layers": 1}}
    companion = _Companion(spec)
    companion.zero_text_layers = zero
    return companion


def _companion(model: nn.Module, official_spec: Mapping[str, Any] | None) -> _Companion:
    """An X-FM with ``model``'s encoders (shared modules) and ``official_spec``'s for the rest,
    built on ``model``'s device."""
    with torch.device(next(model.parameters()).device):
        companion = _build(_companion_spec(model, official_spec))
    for name in ("vision_encoder", "text_encoder", "fusion_encoder"):
        own = getattr(model, name, None)
        if own is not None:
            setattr(companion, name, own)
    return companion


def to_official_classification(
    model: nn.Module, official_spec: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """``model`` (:class:`VQAModel`, :class:`TextClassifier` or the deep-head
    :class:`ImageClassifier`) under the official task names, shapes and dtypes.

    Args:
        model: the task model (any device, ``meta`` included).
        official_spec: ``{"text": ..., "vision": ..., "fusion": ...}`` registry specs of the
            official model's encoders that ``model`` does not have; used only when ``model``
            was not imported from an official checkpoint (no ``official_extras``). Missing
            entries take the :class:`~xfm.fusion.model.XFMConfig` defaults.

    Returns:
        ``{official name: tensor}``; tied official tensors share storage.
    """
    official_layout_of(model)
    out = _export_mapper(model).apply(model.state_dict()).state
    _derived(model, out)
    extras: Mapping[str, torch.Tensor] | None = getattr(model, "official_extras", None)
    if extras:
        for key, value in extras.items():
            out.setdefault(key, value)
        return out
    from xfm.tasks.official import to_official_task

    companion = _companion(model, official_spec)
    for key, value in to_official_task(companion).items():
        if not (companion.zero_text_layers and key.startswith("text_encoder.encoder.layer.")):
            out.setdefault(key, value)
    return out


def official_config_of(model: nn.Module, official_spec: Mapping[str, Any] | None = None) -> dict:
    """A golden-format ``config.json`` dict describing the exported official model (the one
    the importer kept when ``model`` was imported)."""
    kept = getattr(model, "official_config", None)
    if kept:
        return dict(kept)
    from xfm.tasks.official import golden_config_of

    layout = official_layout_of(model)
    with torch.device("meta"):
        companion = _build(_companion_spec(model, official_spec))
    cfg = golden_config_of(companion, layout)
    if companion.zero_text_layers:
        cfg["text"]["layers"] = 0
    cfg["vision"]["mlp_ratio"] = companion.vision_encoder.config.mlp_ratio
    if isinstance(model, VQAModel):
        d = model.text_decoder.config
        cfg["decoder"] = {
            "layers": d.layers,
            "vocab_size": d.vocab_size,
            "width": d.width,
            "heads": d.heads,
            "intermediate_size": d.ffn_dim,
            "encoder_width": d.context_width or d.width,
        }
    return cfg


def export_official_classification_dir(
    model: nn.Module, out: str | os.PathLike[str], official_spec: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` (:func:`to_official_classification`) and a golden-format
    ``config.json`` into ``out``; the task's ``load_official`` reads the folder back."""
    from xfm.core.checkpoint import atomic_write, save_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu() for k, v in to_official_classification(model, official_spec).items()
    }
    save_state_dict(state, str(out / "model.safetensors"))
    with atomic_write(str(out / "config.json"), "w") as fh:
        json.dump(official_config_of(model, official_spec), fh, indent=1)
    return out
