"""The official VQA layout (``models.model_generation.XFMForVQA``) and its golden outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.tasks.official.composed import ComposedLayout
from xfm.tasks.official.golden import (
    decoder_options,
    fusion_options,
    text_options,
    vision_options,
)
from xfm.tasks.official.keys import decoder_rules, fusion_rules, text_rules, vision_rules
from xfm.tasks.vqa_model import VQAConfig, VQAModel

__all__ = ["VQALayout", "vqa_config_from_golden", "vqa_outputs"]


def vqa_config_from_golden(cfg: Mapping[str, Any]) -> VQAConfig:
    """:class:`VQAConfig` from an official golden ``config.json`` (any dimensions)."""
    return VQAConfig(
        text=text_options(cfg),
        vision=vision_options(cfg),
        fusion=fusion_options(cfg),
        decoder=decoder_options(cfg),
    )


@torch.no_grad()
def vqa_outputs(model: VQAModel, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every output of a golden ``vqa`` directory: encoders, question states ``[B, Tq, Dt]``,
    the answer ranking (first-token pass, top-k candidates, re-ranking) and the training loss."""
    out: dict[str, torch.Tensor] = {}
    image, q_ids, q_atts = x["image"], x["question_ids"], x["question_atts"]
    out["vision_embeds"] = model.vision_encoder(image)
    text = model.text_encoder(q_ids, attention_mask=q_atts)
    out["text_embeds"] = text
    states = model.fusion_encoder(text, q_atts, out["vision_embeds"])
    out["question_states"] = states
    rank = model.rank_answers(
        states, x["answer_ids"], x["answer_atts"], int(x["k_test"]), return_logits=True
    )
    out["first_token_logits"] = rank.first_token_logits
    out["first_token_prob_answers"] = rank.first_token_prob_answers
    out["first_token_topk_ids"] = rank.first_token_topk_ids
    out["first_token_topk_probs"] = rank.first_token_topk_probs
    out["candidate_answer_nll"] = rank.candidate_answer_nll
    out["candidate_log_prob_sum"] = rank.candidate_log_prob_sum
    assert rank.candidate_logits is not None
    out["candidate_logits_full"] = rank.candidate_logits
    out["topk_ids"], out["topk_probs"] = rank.topk_ids, rank.topk_probs
    out["answer_index"] = rank.answer_index
    n = x["train_n"]
    nll = model.answer_nll(states, q_atts, x["train_answer_ids"], x["train_answer_atts"], n)
    out["train_answer_nll"] = nll
    out["train_loss"] = model.loss(
        image, q_ids, q_atts, x["train_answer_ids"], x["train_answer_atts"], n, x["train_weights"]
    )
    return out


class VQALayout(ComposedLayout):
    """``XFMForVQA`` <-> :class:`~xfm.tasks.vqa_model.VQAModel`."""

    name = "vqa"
    task = "vqa"
    golden_names = ("vqa",)
    official_class = "models.model_generation.XFMForVQA"
    marker_keys = (r"^text_decoder\.", r"^text_encoder\.embeddings\.", r"^fusion_encoder\.")
    absent_keys = (r"^text_encoder\.roberta\.", r"^cls_head\.")
    model_class = VQAModel

    def live_rules(self, model: nn.Module) -> list:
        return [
            *vision_rules(model.vision_encoder),
            *text_rules(),
            *fusion_rules(),
            *decoder_rules(),
        ]

    def own_specs(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        c = model.config
        return {"text": dict(c.text), "vision": dict(c.vision), "fusion": dict(c.fusion)}

    def model_from_golden(
        self, golden: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> nn.Module:
        return VQAModel(vqa_config_from_golden(golden))

    def model_from_config(
        self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> nn.Module:
        return VQAModel(VQAConfig(**{k: dict(v) for k, v in config.items()}))

    def model_config(self, model: nn.Module) -> dict[str, Any]:
        return {k: dict(v) for k, v in dataclasses.asdict(model.config).items()}

    def golden_config(
        self, model: nn.Module, official_spec: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        kept = getattr(model, "official_config", None)
        if kept:
            return dict(kept)
        cfg = super().golden_config(model, official_spec)
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

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return vqa_outputs(model, inputs), {}
