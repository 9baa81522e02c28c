"""The official NLVR2 layout (``models.model_nlvr.XFMForNLVR``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.tasks.nlvr import NLVRModel
from xfm.tasks.official.xfm_layout import XFMTaskLayout

__all__ = ["NLVRLayout", "nlvr_outputs"]


@torch.no_grad()
def nlvr_outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of a golden ``nlvr`` directory (two images per statement)."""
    ids, atts = inputs["text_ids"], inputs["text_atts"]
    text, vision, f0, f1 = model.pair_states(inputs["image0"], inputs["image1"], ids, atts)
    logits = model(inputs["image0"], inputs["image1"], ids, atts)
    return {
        "text_embeds": text,
        "vision_embeds": vision,
        "fusion_states_image0": f0,
        "fusion_states_image1": f1,
        "output_cls": torch.cat([f0[:, 0], f1[:, 0]], dim=-1),
        "logits": logits,
        "pred_class": logits.argmax(-1),
        "loss": nn.functional.cross_entropy(logits, inputs["targets"].long()),
    }


def cls_head_input(state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """``(cls_head input width, text width)`` of an official state dict, when both are there."""
    head = state.get("cls_head.0.weight")
    word = state.get("text_encoder.embeddings.word_embeddings.weight")
    if head is None or word is None or head.dim() != 2:
        return None
    return int(head.shape[1]), int(word.shape[1])


class NLVRLayout(XFMTaskLayout):
    """``XFMForNLVR`` <-> :class:`~xfm.tasks.nlvr.NLVRModel` (its ``cls_head`` reads the two
    images' ``[CLS]`` side by side: input width ``2 * Dt``, which tells it from GLUE's)."""

    name = "nlvr"
    task = "nlvr"
    golden_names = ("nlvr",)
    official_class = "models.model_nlvr.XFMForNLVR"
    marker_keys = (r"^text_encoder\.embeddings\.", r"^cls_head\.3\.", r"^fusion_encoder\.")
    absent_keys = (r"^text_encoder\.roberta\.", r"^cls_head\.12\.", r"^text_decoder\.")
    model_class = NLVRModel

    def matches(self, state: Mapping[str, torch.Tensor]) -> bool:
        widths = cls_head_input(state)
        return super().matches(state) and widths is not None and widths[0] == 2 * widths[1]

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return nlvr_outputs(model, inputs), {}
