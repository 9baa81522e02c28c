"""The official grounding layout (``models.model_grounding.XFMForGrounding``, bbox variant)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.tasks.grounding import GroundingModel
from xfm.tasks.official.xfm_layout import XFMTaskLayout
from xfm.train.objectives import bbox_losses

__all__ = ["GroundingLayout", "grounding_outputs"]


@torch.no_grad()
def grounding_outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of a golden ``grounding`` (bbox) directory."""
    ids, atts, image = inputs["text_ids"], inputs["text_atts"], inputs["image"]
    text = model.encode_text(ids, atts)
    vision = model.encode_image(image)
    fused = model.fuse(text, atts, vision)
    raw = model.bbox_head(fused[:, 0])
    coord = model(image, ids, atts)
    l1, giou = bbox_losses(coord, inputs["target_bbox"])
    return {
        "text_embeds": text,
        "vision_embeds": vision,
        "fusion_states": fused,
        "bbox_head_logits": raw,
        "output_coord": coord,
        "loss_bbox": l1,
        "loss_giou": giou,
    }


class GroundingLayout(XFMTaskLayout):
    """``XFMForGrounding`` <-> :class:`~xfm.tasks.grounding.GroundingModel`."""

    name = "grounding"
    task = "grounding"
    golden_names = ("grounding", "grounding_bbox")
    official_class = "models.model_grounding.XFMForGrounding"
    marker_keys = (r"^text_encoder\.embeddings\.", r"^bbox_head\.")
    absent_keys = (r"^text_encoder\.roberta\.", r"^itm_head\.")
    model_class = GroundingModel

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return grounding_outputs(model, inputs), {}
