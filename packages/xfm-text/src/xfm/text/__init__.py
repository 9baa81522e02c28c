"""xfm.text: Language encoder (BERT/RoBERTa), tokenizer, text masking, Hugging Face import.

Public API:

* :class:`TextEncoderConfig`, :class:`TextEncoder` (:class:`BertEncoder`,
  :class:`RobertaEncoder`; entry points ``xfm.text_encoder`` ``bert`` and ``roberta``),
  :class:`TextEmbeddings`, :class:`MLMHead`, :func:`gather_positions`;
* :class:`TextTokenizer`, :func:`load_tokenizer`, :class:`TokenizedBatch`;
* masking: :func:`text_mlm_mask`, :func:`caption_mask`, :func:`span_mask`, :class:`MaskedTokens`;
* Hugging Face weights: :func:`from_hf`, :func:`load_hf_state_dict`, :func:`to_hf_state_dict`,
  :func:`save_hf`, and the key rules (:func:`encoder_key_rules`, :func:`mlm_head_key_rules`,
  :func:`encoder_drop_patterns`, :func:`mlm_head_drop_patterns`, :func:`hf_key_mapper`, :func:`hf_layout`) that
  other packages reuse for checkpoints embedding a BERT/RoBERTa (the official X-FM one).
"""

from xfm.text.config import TextEncoderConfig
from xfm.text.embeddings import TextEmbeddings, roberta_position_ids
from xfm.text.encoder import BertEncoder, RobertaEncoder, TextEncoder, init_bert_weights
from xfm.text.hf import (
    config_from_hf,
    config_to_hf,
    encoder_drop_patterns,
    encoder_key_rules,
    from_hf,
    hf_key_mapper,
    hf_layout,
    load_hf_state_dict,
    mlm_head_drop_patterns,
    mlm_head_key_rules,
    read_hf_checkpoint,
    save_hf,
    to_hf_state_dict,
)
from xfm.text.masking import IGNORE_INDEX, MaskedTokens, caption_mask, span_mask, text_mlm_mask
from xfm.text.mlm_head import MLMHead, gather_positions
from xfm.text.tokenizer import TextTokenizer, TokenizedBatch, load_tokenizer

__version__ = "0.2.0"

__all__ = [
    "IGNORE_INDEX",
    "BertEncoder",
    "MLMHead",
    "MaskedTokens",
    "RobertaEncoder",
    "TextEmbeddings",
    "TextEncoder",
    "TextEncoderConfig",
    "TextTokenizer",
    "TokenizedBatch",
    "caption_mask",
    "config_from_hf",
    "config_to_hf",
    "encoder_drop_patterns",
    "encoder_key_rules",
    "from_hf",
    "gather_positions",
    "hf_key_mapper",
    "hf_layout",
    "init_bert_weights",
    "load_hf_state_dict",
    "load_tokenizer",
    "mlm_head_drop_patterns",
    "mlm_head_key_rules",
    "read_hf_checkpoint",
    "roberta_position_ids",
    "save_hf",
    "span_mask",
    "text_mlm_mask",
    "to_hf_state_dict",
]
