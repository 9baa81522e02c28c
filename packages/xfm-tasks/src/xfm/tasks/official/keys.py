"""Key rules from the official X-FM task names to ours (VQA, GLUE, ImageNet models).

Official task models build the text encoder as a bare ``RobertaModel``
(``text_encoder.embeddings.*`` / ``text_encoder.encoder.*``, no ``roberta.`` infix), the fusion
encoder as ``RobertaForMaskedLM`` (``fusion_encoder.roberta.*``) and the VQA decoder as
``RobertaForCausalLM`` (``text_decoder.roberta.*``, ``text_decoder.lm_head.*``). The tensors
none of our models use are dropped by :mod:`xfm.tasks.official.unused`'s rules (and kept).
"""

from __future__ import annotations

from xfm.core.checkpoint import Drop, Rule
from xfm.text.hf import encoder_drop_patterns, encoder_key_rules, mlm_head_key_rules
from xfm.vision.convert import beit_rules, fit_rules
from xfm.vision.tower import VisionTransformer

__all__ = [
    "decoder_rules",
    "fusion_rules",
    "text_rules",
    "vision_rules",
]


def vision_rules(encoder: VisionTransformer, prefix: str = "vision_encoder.") -> list[Rule]:
    """BEiT-v2 names (prefix kept) + grid fitting of relative position tables."""
    layers = encoder.config.layers if encoder.config.rel_pos == "per_block" else None
    return [*beit_rules(prefix, layers=layers), *fit_rules(encoder, prefix)]


def text_rules(src: str = "text_encoder.", dst: str = "text_encoder.") -> list[Rule]:
    """A bare ``RobertaModel`` at ``src`` -> :class:`xfm.text.TextEncoder` at ``dst``."""
    return [*(Drop(p) for p in encoder_drop_patterns(src)), *encoder_key_rules(src, dst)]


def fusion_rules(src: str = "fusion_encoder.", dst: str = "fusion_encoder.") -> list[Rule]:
    """``RobertaForMaskedLM`` fusion encoder layers -> ``CrossAttentionFusionEncoder``."""
    return encoder_key_rules(src + "roberta.", dst)


def decoder_rules(src: str = "text_decoder.", dst: str = "text_decoder.") -> list[Rule]:
    """``RobertaForCausalLM`` -> :class:`~xfm.tasks.decoder.AnswerDecoder` (tied head kept)."""
    s = src.replace(".", r"\.")
    return [
        *(Drop(p) for p in encoder_drop_patterns(src + "roberta.")),
        Drop(rf"^{s}lm_head\.decoder\.bias$"),
        *encoder_key_rules(src + "roberta.", dst),
        *mlm_head_key_rules("roberta", src + "lm_head.", dst + "lm_head."),
    ]
