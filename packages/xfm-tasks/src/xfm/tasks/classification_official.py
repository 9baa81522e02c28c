"""Shared pieces for the official X-FM *task* checkpoints (VQA, GLUE, ImageNet classification).

* encoder options from a golden ``config.json`` (``vision`` / ``text`` / ``fusion`` / ``decoder``
  sections, see ``../shared/golden_tasks/README.md``);
* key rules from the official task names to ours. Task models build the text encoder as a bare
  ``RobertaModel`` (``text_encoder.embeddings.*`` / ``text_encoder.encoder.*``, no ``roberta.``
  infix), the fusion encoder as ``RobertaForMaskedLM`` (``fusion_encoder.roberta.*``; its
  embeddings, ``lm_head`` and ``lm_cap_head`` are dead weights in every task model) and the VQA
  decoder as ``RobertaForCausalLM`` (``text_decoder.roberta.*``, ``text_decoder.lm_head.*``).

Keys our task models do not use (dead weights of the official classes) are *dropped* on import
and listed in the load report; they are never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import Drop, LoadReport, Rule
from xfm.text.hf import encoder_drop_patterns, encoder_key_rules, mlm_head_key_rules
from xfm.vision.convert import beit_rules, fit_rules
from xfm.vision.tower import VisionTransformer

__all__ = [
    "decoder_options",
    "fusion_options",
    "keep_official_extras",
    "official_decoder_rules",
    "official_fusion_rules",
    "official_text_rules",
    "official_vision_rules",
    "text_options",
    "vision_options",
]


def _need(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ValueError(f"golden config section {where!r} lacks {key!r}; has {sorted(section)}")
    return section[key]


def vision_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``beit_v2`` registry options from the ``vision`` section of a golden ``config.json``."""
    v = cfg["vision"]
    return {
        "name": "beit_v2",
        "image_size": int(_need(v, "image_size", "vision")),
        "patch_size": int(_need(v, "patch_size", "vision")),
        "width": int(_need(v, "width", "vision")),
        "layers": int(_need(v, "layers", "vision")),
        "heads": int(_need(v, "heads", "vision")),
        "mlp_ratio": float(v.get("mlp_ratio", 4)),
        "layer_norm_eps": float(v.get("layer_norm_eps", 1e-6)),
        "rel_pos": "per_block" if not v.get("use_shared_rel_pos_bias", False) else "shared",
    }


def text_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``roberta`` registry options from the ``text`` section (RoBERTa json for the rest)."""
    t = cfg["text"]
    j = cfg.get("text_config_json", {})
    return {
        "name": "roberta",
        "vocab_size": int(_need(t, "vocab_size", "text")),
        "width": int(_need(t, "width", "text")),
        "layers": int(_need(t, "layers", "text")),
        "heads": int(_need(t, "heads", "text")),
        "ffn_dim": int(t.get("intermediate_size", j.get("intermediate_size", 4 * t["width"]))),
        "max_positions": int(t.get("max_position_embeddings", j.get("max_position_embeddings"))),
        "pad_token_id": int(t.get("pad_token_id", 1)),
        "type_vocab_size": int(t.get("type_vocab_size", 1)),
        "layer_norm_eps": float(t.get("layer_norm_eps", 1e-5)),
        "position_style": "roberta",
    }


def fusion_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cross_attention`` fusion-encoder options from the ``fusion`` + ``text`` sections."""
    f, t = cfg["fusion"], text_options(cfg)
    return {
        "name": "cross_attention",
        "width": int(f.get("width", t["width"])),
        "layers": int(_need(f, "layers", "fusion")),
        "heads": int(f.get("heads", t["heads"])),
        "ffn_dim": int(f.get("intermediate_size", t["ffn_dim"])),
        "vision_width": int(f.get("encoder_width", cfg["vision"]["width"])),
        "layer_norm_eps": t["layer_norm_eps"],
    }


def decoder_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~xfm.tasks.decoder.DecoderConfig` fields from the ``decoder`` section."""
    d, t = cfg["decoder"], text_options(cfg)
    return {
        "vocab_size": int(d.get("vocab_size", t["vocab_size"])),
        "width": int(d.get("width", t["width"])),
        "layers": int(_need(d, "layers", "decoder")),
        "heads": int(d.get("heads", t["heads"])),
        "ffn_dim": int(d.get("intermediate_size", t["ffn_dim"])),
        "max_positions": t["max_positions"],
        "type_vocab_size": t["type_vocab_size"],
        "pad_token_id": t["pad_token_id"],
        "bos_token_id": int(cfg["text"].get("bos_token_id", 0)),
        "eos_token_id": int(cfg["text"].get("eos_token_id", 2)),
        "layer_norm_eps": t["layer_norm_eps"],
        "context_width": int(d.get("encoder_width", t["width"])),
    }


def official_vision_rules(
    encoder: VisionTransformer, prefix: str = "vision_encoder."
) -> list[Rule]:
    """BEiT-v2 names (prefix kept) + grid fitting of relative position tables."""
    layers = encoder.config.layers if encoder.config.rel_pos == "per_block" else None
    return [*beit_rules(prefix, layers=layers), *fit_rules(encoder, prefix)]


def official_text_rules(src: str = "text_encoder.", dst: str = "text_encoder.") -> list[Rule]:
    """A bare ``RobertaModel`` at ``src`` -> :class:`xfm.text.TextEncoder` at ``dst``."""
    return [*(Drop(p) for p in encoder_drop_patterns(src)), *encoder_key_rules(src, dst)]


def official_fusion_rules(src: str = "fusion_encoder.", dst: str = "fusion_encoder.") -> list[Rule]:
    """``RobertaForMaskedLM`` fusion encoder -> ``CrossAttentionFusionEncoder`` layers.

    Its embeddings, ``lm_head`` and ``lm_cap_head`` are unused by every task model: dropped.
    """
    s = src.replace(".", r"\.")
    return [
        Drop(rf"^{s}roberta\.embeddings\."),
        Drop(rf"^{s}lm_head\."),
        Drop(rf"^{s}lm_cap_head\."),
        *encoder_key_rules(src + "roberta.", dst),
    ]


def official_decoder_rules(src: str = "text_decoder.", dst: str = "text_decoder.") -> list[Rule]:
    """``RobertaForCausalLM`` -> :class:`~xfm.tasks.decoder.AnswerDecoder` (tied head kept)."""
    s = src.replace(".", r"\.")
    return [
        *(Drop(p) for p in encoder_drop_patterns(src + "roberta.")),
        Drop(rf"^{s}lm_head\.decoder\.bias$"),
        *encoder_key_rules(src + "roberta.", dst),
        *mlm_head_key_rules("roberta", src + "lm_head.", dst + "lm_head."),
    ]


def keep_official_extras(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    report: LoadReport,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Keep the official tensors the import dropped (``model.official_extras``) and the golden
    config (``model.official_config``): the official export writes them back unchanged."""
    model.official_extras = {k: state[k].detach().clone() for k in report.dropped}
    model.official_config = dict(config) if config else {}
