"""The official GLUE layout (``models.model_classification.XFMForClassification``, text).

The official class carries a vision and a fusion encoder that GLUE never runs
(:data:`xfm.tasks.official.unused.DEAD_ENCODERS`); our :class:`~xfm.tasks.classification.
TextClassifier` has the language encoder and ``cls_head`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.tasks.classification import TextClassifier
from xfm.tasks.official.composed import ComposedLayout
from xfm.tasks.official.golden import text_options
from xfm.tasks.official.keys import text_rules
from xfm.tasks.official.nlvr import cls_head_input

__all__ = ["GLUELayout", "glue_outputs", "num_labels"]


def num_labels(state: Mapping[str, torch.Tensor]) -> int:
    """Classes of an official / our ``cls_head`` (rows of its last linear layer)."""
    last = max(
        (k for k in state if k.startswith("cls_head.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    return int(state[last].shape[0])


@torch.no_grad()
def glue_outputs(model: TextClassifier, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of a golden ``classification_glue`` directory."""
    text = model.text_encoder(x["text_ids"], attention_mask=x["text_atts"])
    logits = model.cls_head(text[:, 0])
    return {
        "text_embeds": text,
        "text_cls": text[:, 0],
        "logits": logits,
        "loss": model.loss(logits, x["targets"]),
        "pred_class": logits.argmax(-1),
    }


class GLUELayout(ComposedLayout):
    """``XFMForClassification`` (GLUE) <-> :class:`TextClassifier`."""

    name = "glue"
    task = "glue"
    golden_names = ("classification_glue",)
    official_class = "models.model_classification.XFMForClassification (GLUE)"
    marker_keys = (r"^text_encoder\.embeddings\.", r"^cls_head\.3\.")
    absent_keys = (r"^text_encoder\.roberta\.", r"^cls_head\.12\.", r"^text_decoder\.")
    model_class = TextClassifier

    def matches(self, state: Mapping[str, torch.Tensor]) -> bool:
        widths = cls_head_input(state)
        return super().matches(state) and widths is not None and widths[0] == widths[1]

    def live_rules(self, model: nn.Module) -> list:
        return text_rules()

    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        """The classifier of ``golden``; its classes from ``state``'s head (else 2)."""
        return TextClassifier(text_options(golden), num_labels(state) if state else 2)

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        return TextClassifier(dict(config.get("text", {"name": "roberta"})), num_labels(state))

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        return {"text": dict(model.encoder_specs["text"])}

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return glue_outputs(model, inputs), {}
