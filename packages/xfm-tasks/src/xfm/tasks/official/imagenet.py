"""The official ImageNet layout (``models.model_classification.XFMForClassification``, images).

The official class carries 0-layer text and fusion encoders that image classification never
runs (:data:`xfm.tasks.official.unused.DEAD_ENCODERS`); our :class:`~xfm.tasks.classification.
ImageClassifier` (deep head) has the vision encoder and ``cls_head`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xfm.tasks.classification import ImageClassifier
from xfm.tasks.official.composed import ComposedLayout
from xfm.tasks.official.glue import num_labels
from xfm.tasks.official.golden import vision_options
from xfm.tasks.official.keys import vision_rules

__all__ = ["ImageNetLayout", "imagenet_outputs"]


@torch.no_grad()
def imagenet_outputs(model: ImageClassifier, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of a golden ``classification_imagenet`` directory."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    vision = model.vision_encoder(x["image"])
    feats = torch.cat([vision[:, 0], vision[:, 1:].mean(1)], dim=-1)
    logits = model.cls_head(feats)
    return {
        "vision_embeds": vision,
        "features": feats,
        "logits": logits,
        "pred_class": logits.argmax(-1),
        "loss_model_ce": F.cross_entropy(logits, x["targets"]),
        "loss_label_smoothing": LabelSmoothingCrossEntropy(0.1)(logits, x["targets"]),
        "loss_soft_target": SoftTargetCrossEntropy()(logits, x["soft_targets"]),
    }


class ImageNetLayout(ComposedLayout):
    """``XFMForClassification`` (ImageNet) <-> the deep-head :class:`ImageClassifier`."""

    name = "imagenet"
    task = "imagenet"
    golden_names = ("classification_imagenet",)
    official_class = "models.model_classification.XFMForClassification (ImageNet)"
    marker_keys = (r"^vision_encoder\.", r"^cls_head\.12\.")
    absent_keys = (r"^text_decoder\.",)
    model_class = ImageClassifier

    def owns(self, model: nn.Module) -> bool:
        if not isinstance(model, ImageClassifier):
            return False
        if not isinstance(model.cls_head, nn.Sequential):
            raise TypeError(
                "only the deep-head ImageClassifier (ImageNet fine-tuning) has an official "
                "layout; a linear probe has none"
            )
        return True

    def live_rules(self, model: nn.Module) -> list:
        return vision_rules(model.vision_encoder)

    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        """The classifier of ``golden``; its classes from ``state``'s head (else 1000)."""
        return ImageClassifier(vision_options(golden), num_labels(state) if state else 1000)

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        vision = dict(config.get("vision", {"name": "beit_v2"}))
        return ImageClassifier(vision, num_labels(state))

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        return {"vision": dict(model.encoder_specs["vision"])}

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return imagenet_outputs(model, inputs), {}
