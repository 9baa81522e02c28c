"""``config.json`` builders for the task golden sets (keys of ``../shared/golden_tasks/*``)."""

from __future__ import annotations

from typing import Any

from official_harness import (
    OFFICIAL_COMMIT,
    TEXT_DIR_NOTE,
    roberta_json,
    tied_parameters,
    vision_description,
)
from other_dims import DIMS as D
from torch import nn


def text_json() -> dict:
    """RoBERTa json of every task set (its ``num_hidden_layers`` is overridden by the config)."""
    return roberta_json(
        D.vocab, D.text_width, D.text_layers, D.text_heads, D.text_ffn, D.max_positions
    )


def official_config(text_layers: int, fusion_layers: int, **extra: Any) -> dict:
    """Config dict given to the official task constructor (``vision_config`` as a dict)."""
    return {
        "use_beit_v2": True,
        "vision_config": D.vision_json(),
        "image_res": D.image_res,
        "patch_size": D.patch,
        "local_attn_depth": -1,
        "text_encoder": TEXT_DIR_NOTE,
        "text_num_hidden_layers": text_layers,
        "text_fusion_start_at": text_layers,
        "fusion_num_hidden_layers": fusion_layers,
        "fusion_fusion_start_at": 0,
        **extra,
    }


def describe_task(
    model: nn.Module,
    *,
    task: str,
    official_class: str,
    official_yaml: str,
    seed: int,
    config: dict,
    fusion_used: bool = True,
    decoder_layers: int | None = None,
    extra: dict | None = None,
) -> dict:
    """The ``config.json`` dict of a task set."""
    text_layers = config["text_num_hidden_layers"]
    fusion_layers = config["fusion_num_hidden_layers"]
    out: dict[str, Any] = {
        "task": task,
        "official_class": official_class,
        "official_commit": OFFICIAL_COMMIT,
        "set": "other",
        "seed": seed,
        "official_yaml": official_yaml,
        "vision": vision_description(
            D.image_res, D.patch, D.vision_width, D.vision_layers, D.vision_heads, D.mlp_ratio
        ),
        "text": {
            "type": "RobertaModel(add_pooling_layer=False) (models/xroberta.py)",
            "vocab_size": D.vocab,
            "width": D.text_width,
            "layers": text_layers,
            "heads": D.text_heads,
            "intermediate_size": D.text_ffn,
            "max_position_embeddings": D.max_positions,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-05,
            "fusion_layer": config["text_fusion_start_at"],
            "cross_attention_layers": 0,
        },
        "fusion": {
            "type": "RobertaForMaskedLM (models/xroberta.py)",
            "layers": fusion_layers,
            "fusion_layer": 0,
            "cross_attention_layers": fusion_layers,
            "encoder_width": D.vision_width,
            "width": D.text_width,
            "heads": D.text_heads,
            "vocab_size": D.vocab,
            "used": fusion_used,
        },
    }
    if decoder_layers is not None:
        out["decoder"] = {
            "type": "RobertaForCausalLM (models/xroberta.py)",
            "layers": decoder_layers,
            "fusion_layer (decoder_fusion_start_at)": 0,
            "encoder_width": D.text_width,
            "vocab_size": D.vocab,
            "width": D.text_width,
            "heads": D.text_heads,
            "intermediate_size": D.text_ffn,
        }
    out["has_fusion_proj"] = hasattr(model, "fusion_proj")
    out["tied_parameters"] = tied_parameters(model)
    out["official_config_used"] = config
    out["text_config_json"] = text_json()
    out.update(extra or {})
    return out
