"""The official pretraining layout (``models.model_pretrain.XFM``): :class:`PretrainLayout`.

Import / export are :func:`xfm.fusion.official.from_official` / :func:`~xfm.fusion.official.
to_official` (the key mapping lives beside the model). Golden outputs: every model output the
model alone computes, plus the losses of xfm-train's objectives
(:func:`xfm.train.objectives.official.golden_losses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import LoadReport
from xfm.fusion.model import XFM
from xfm.fusion.official import (
    to_official,
    xfm_config_from_golden,
)
from xfm.tasks.official.golden import golden_config_of
from xfm.tasks.official.xfm_layout import XFMTaskLayout
from xfm.train.objectives import golden_losses, hard_negative_weights

__all__ = ["PretrainLayout", "pretrain_outputs"]


@torch.no_grad()
def pretrain_outputs(model: XFM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every output of the official pretraining model that the model alone can compute.

    ``inputs``: a golden ``inputs.safetensors`` (``image [B, 3, S, S]``, ``text_ids`` /
    ``text_atts [B, T]``, masks, fixed hard negatives, region rows).
    """
    model.clamp_temp()
    image, ids, atts = inputs["image"], inputs["text_ids"], inputs["text_atts"]
    out: dict[str, torch.Tensor] = {}
    vision = model.encode_image(image)
    out["vision_embeds"] = vision
    out["vision_embeds_masked"] = model.encode_masked_image(image, inputs["image_mask"])
    text = model.encode_text(ids, atts)
    out["text_embeds"], out["text_cls"] = text, text[:, 0]
    image_feat, text_feat = model.itc_features(vision, text)
    out["image_feat"], out["text_feat"] = image_feat, text_feat
    sim_i2t = model.similarity(image_feat, text_feat)
    out["sim_i2t"] = sim_i2t
    out["itm_neg_weights_t2i"] = hard_negative_weights(sim_i2t.t().float())
    out["itm_neg_weights_i2t"] = hard_negative_weights(sim_i2t.float())

    kv = model.fusion_image_kv(vision)  # each image's cross-attention K/V, computed once
    pos = model.fuse(text, atts, image_kv=kv)
    out["fusion_states_pos"] = pos
    out["itm_logits_pos"] = model.itm_logits(pos)
    neg_img, neg_txt = inputs["neg_image_idx"].long(), inputs["neg_text_idx"].long()
    neg_i = model.fuse(text, atts, image_kv=[(k[neg_img], v[neg_img]) for k, v in kv])
    neg_t = model.fuse(text[neg_txt], atts[neg_txt], image_kv=kv)
    out["itm_logits_all"] = model.itm_logits(torch.cat([pos, neg_i, neg_t]))

    masked = model.encode_text(inputs["masked_text_ids"], atts)
    out["text_embeds_masked"] = masked
    positions = inputs["masked_pos"]
    out["fusion_mlm_logits"] = model.fusion_mlm_logits(
        model.fuse(masked, atts, image_kv=kv), positions
    )
    out["text_mlm_logits"] = model.text_mlm_logits(masked, positions)

    group = inputs["idx_to_group_img"].long()
    region_atts = inputs["region_image_atts"]
    out["region_vision_embeds"] = model.region_vision_states(vision, group, region_atts)
    full = vision[group]
    out["region_vision_embeds_fullatts"] = full
    out["bbox_pred"] = model.predict_bbox(model.fuse(text, atts, full))
    return out


class PretrainLayout(XFMTaskLayout):
    """``models.model_pretrain.XFM`` <-> :class:`~xfm.fusion.model.XFM`."""

    name = "pretrain"
    task = None
    golden_names = ("pretrain",)
    official_class = "models.model_pretrain.XFM"
    marker_keys = (r"^text_encoder\.roberta\.", r"^vision_encoder\.", r"^fusion_encoder\.")
    text_prefix = "text_encoder.roberta."
    model_class = XFM

    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        return XFM(xfm_config_from_golden(golden))

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        """The :class:`XFM` of a pretraining run's model spec (``xfm_model_config``)."""
        options = dict(config)
        name = options.pop("name", "xfm")
        if name != "xfm":
            raise ValueError(f"the model is {name!r}, not an X-FM: it has no official layout")
        return XFM(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in options.items()})

    def import_state(
        self,
        model: nn.Module,
        state: Mapping[str, torch.Tensor],
        *,
        strict: bool = True,
        source: str = "<official state dict>",
        golden: Mapping[str, Any] | None = None,
    ) -> LoadReport:
        report = super().import_state(model, state, strict=strict, source=source, golden=golden)
        if not model.config.vision_guidance:
            model.reset_mim_teacher()  # the frozen MIM teacher = the imported vision encoder
        return report

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return to_official(model, text_prefix=self.text_prefix)

    def golden_config(self, model: nn.Module) -> dict[str, Any]:
        kept = getattr(model, "official_config", None)
        if kept:
            return dict(kept)
        out = golden_config_of(model, "pretrain")
        del out["task"]
        out["flags"] = {"detach_text_forMLM": bool(model.config.stop_gradient)}
        return out

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        computed = pretrain_outputs(model, inputs)
        with torch.no_grad():
            computed.update(golden_losses(model, inputs))
        return computed, {}
