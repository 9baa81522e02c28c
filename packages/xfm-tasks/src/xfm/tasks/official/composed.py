"""The layouts whose model is not an X-FM (VQA, GLUE, ImageNet): import by a key mapper,
export by its inverse.

Three kinds of official tensors:

* **live**: the model's own weights, renamed by the *inverse* of the import
  :class:`~xfm.core.checkpoint.KeyMapper` (its plain renames; the import-only ``Drop`` rules and
  the resizing ``Transform`` s have nothing to undo);
* **derived**: buffers and tied aliases of live weights, recomputed (``relative_position_index``
  of the vision blocks, ``position_ids`` of the text encoder / decoder,
  ``text_decoder.lm_head.decoder.bias`` = ``text_decoder.lm_head.bias``);
* **unused**: :mod:`xfm.tasks.official.unused` (kept on import, written back on export).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.core.checkpoint import KeyMapper, LoadReport, Rename, load_into
from xfm.tasks.official.golden import golden_config_of
from xfm.tasks.official.layout import OfficialLayout
from xfm.tasks.official.unused import (
    build_companion,
    companion_spec,
    fresh_unused,
    keep_extras,
    merge_extras,
    unused_rules,
)
from xfm.vision.rel_pos import relative_position_index

__all__ = ["ComposedLayout", "derived_tensors"]


def derived_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers and tied aliases the official model holds beside ``model``'s live weights."""
    out: dict[str, torch.Tensor] = {}
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
        out["text_decoder.lm_head.decoder.bias"] = decoder.lm_head.bias
        ids = torch.arange(decoder.config.max_positions, device=decoder.lm_head.bias.device)
        out["text_decoder.roberta.embeddings.position_ids"] = ids.unsqueeze(0)
    return out


class ComposedLayout(OfficialLayout):
    """An official task class mapped onto one of our composed models.

    Subclasses implement :meth:`live_rules` (official -> ours renames of the live weights) and
    :meth:`own_specs` (registry specs of the encoders the model has).
    """

    model_class: ClassVar[type[nn.Module]] = nn.Module
    fusion_mlm: ClassVar[bool] = False

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_class)

    def live_rules(self, model: nn.Module) -> list:
        raise NotImplementedError

    def own_specs(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in getattr(model, "encoder_specs", {}).items()}

    def key_mapper(self, model: nn.Module) -> KeyMapper:
        """Official -> ``model``'s names: unused tensors dropped (and kept), live ones renamed."""
        return KeyMapper(
            [*unused_rules(self.name, fusion_mlm=self.fusion_mlm), *self.live_rules(model)],
            name=f"official-xfm-{self.name}",
        )

    def import_state(
        self,
        model: nn.Module,
        state: Mapping[str, torch.Tensor],
        *,
        strict: bool = True,
        source: str = "<official state dict>",
        golden: Mapping[str, Any] | None = None,
    ) -> LoadReport:
        if strict:  # (a fine-tuning init may take the encoders of another task)
            self.check_family(state, source)
        report = load_into(
            model, state, mapper=self.key_mapper(model), strict=strict, source=source
        )
        keep_extras(model, state, report, golden)
        return report

    def export_state(
        self, model: nn.Module, official_spec: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """``model`` under the official names, shapes and dtypes (tied tensors share storage).

        ``official_spec``: ``{"text": ..., "vision": ..., "fusion": ...}`` registry specs of the
        official model's encoders that ``model`` does not have; used only when ``model`` was
        never imported (no ``official_extras``).
        """
        renames = [r for r in self.live_rules(model) if type(r) is Rename]
        out = KeyMapper(renames, name="official-task").inverse().apply(model.state_dict()).state
        out.update(derived_tensors(model))
        if getattr(model, "official_extras", None):
            return merge_extras(out, model, ())
        return merge_extras(
            out, model, fresh_unused(model, self.own_specs(model), official_spec).items()
        )

    def golden_config(
        self, model: nn.Module, official_spec: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        kept = getattr(model, "official_config", None)
        if kept:
            return dict(kept)
        with torch.device("meta"):
            companion = build_companion(companion_spec(self.own_specs(model), official_spec))
        cfg = golden_config_of(companion, self.golden_names[0])
        if companion.zero_text_layers:
            cfg["text"]["layers"] = 0
        cfg["vision"]["mlp_ratio"] = companion.vision_encoder.config.mlp_ratio
        return cfg
