"""BERT/RoBERTa-style language encoder: embeddings and a stack of post-LN layers.

The layers are :class:`xfm.core.layers.PostLNLayer` (the same layer the fusion encoder uses with
cross-attention), so attention runs on :func:`xfm.core.attention.attention` and any of its
backends. ``bert`` and ``roberta`` are registered as ``xfm.text_encoder`` entry points::

    from xfm.core import registry

    encoder = registry.create("text_encoder", "roberta", layers=2, width=64, heads=4, ffn_dim=128)
    hidden = encoder(input_ids, attention_mask)  # [B, T, 64]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xfm.core.layers import PostLNLayer
from xfm.text.config import TextEncoderConfig
from xfm.text.embeddings import TextEmbeddings, _is_compiling


def key_mask_from_attention_mask(
    attention_mask: torch.Tensor | None, batch: int, length: int
) -> torch.Tensor | None:
    """Bool key mask ``[B, T]`` (True = real token) from a 0/1 or bool ``attention_mask``.

    Returns ``None`` when there is no mask or every token is real (attention then needs no mask,
    which lets SDPA pick its fastest kernel).
    """
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask must be [B, T] = [{batch}, {length}] (1/True = real token); got "
            f"{tuple(attention_mask.shape)}"
        )
    key_mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.ne(0)
    if not _is_compiling() and bool(key_mask.all()):
        return None
    return key_mask


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation, applied to every submodule of ``module``.

    ``Linear``: weight N(0, std), bias 0; ``Embedding``: N(0, std) with the padding row 0;
    ``LayerNorm``: weight 1, bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TextEncoder(nn.Module):
    """Bidirectional post-LN transformer over token ids (BERT / RoBERTa).

    Args:
        config: a :class:`TextEncoderConfig` (or a dict of its fields); default: the class's
            base configuration (bert-base for :class:`TextEncoder` and :class:`BertEncoder`,
            roberta-base for :class:`RobertaEncoder`).
        **overrides: config fields to replace, e.g. ``layers=2, width=64``.

    Attributes:
        config: the resolved :class:`TextEncoderConfig`.
        width: hidden size ``D``.
        embeddings: :class:`TextEmbeddings` (``embeddings.word`` is the table to tie an MLM
            decoder to).
        layers: ``nn.ModuleList`` of :class:`xfm.core.layers.PostLNLayer`.
    """

    default_config: ClassVar[str] = "bert_base"

    def __init__(
        self, config: TextEncoderConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        super().__init__()
        if config is None:
            config = getattr(TextEncoderConfig, self.default_config)()
        elif isinstance(config, Mapping):
            config = TextEncoderConfig.from_dict(
                dict(config), base=getattr(TextEncoderConfig, self.default_config)()
            )
        elif not isinstance(config, TextEncoderConfig):
            raise TypeError(
                f"{type(self).__name__}: config must be a TextEncoderConfig, a dict or None; got "
                f"{type(config).__name__}"
            )
        config = TextEncoderConfig.from_dict(overrides, base=config)
        self.config = config
        self.width = config.width
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(
            PostLNLayer(
                config.width,
                config.heads,
                config.ffn_dim,
                eps=config.layer_norm_eps,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                act=config.act,
                backend=config.backend,  # type: ignore[arg-type]
            )
            for _ in range(config.layers)
        )
        init_bert_weights(self, config.init_std)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether layers are recomputed in the backward pass (see :meth:`set_grad_checkpointing`)."""
        return self.config.gradient_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the layers on or off (it acts in training mode only)."""
        self.config.gradient_checkpointing = bool(enable)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode token ids.

        Args:
            input_ids: ``[B, T]`` token ids in ``[0, vocab_size)``.
            attention_mask: ``[B, T]``, 1/True for real tokens, 0/False for padding.
            token_type_ids: ``[B, T]`` segment ids (default 0).
            inputs_embeds: ``[B, T, D]`` word embeddings used instead of ``input_ids``
                (positions and token types are still added, as in Hugging Face).
            position_ids: ``[B, T]`` explicit position ids (default from the position style).

        Returns:
            Hidden states ``[B, T, D]`` of the last layer (``[:, 0]`` is the CLS vector).
        """
        x = self.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
        )
        return self.encode_states(x, attention_mask)

    def encode_states(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the layer stack on states ``hidden`` ``[B, T, D]`` (no embedding layer).

        Args:
            hidden: ``[B, T, D]`` input states.
            attention_mask: ``[B, T]``, 1/True for real tokens.

        Returns:
            ``[B, T, D]``.
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.width:
            raise ValueError(
                f"hidden states must be [B, T, {self.width}]; got {tuple(hidden.shape)}"
            )
        key_mask = key_mask_from_attention_mask(attention_mask, hidden.shape[0], hidden.shape[1])
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                hidden = checkpoint(layer, hidden, key_mask, use_reentrant=False)
            else:
                hidden = layer(hidden, key_mask=key_mask)
        return hidden

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"layers={c.layers}, width={c.width}, heads={c.heads}, vocab={c.vocab_size}, "
            f"positions={c.position_style}"
        )


class BertEncoder(TextEncoder):
    """:class:`TextEncoder` whose defaults are bert-base (absolute positions, pad id 0)."""

    default_config: ClassVar[str] = "bert_base"


class RobertaEncoder(TextEncoder):
    """:class:`TextEncoder` whose defaults are roberta-base (offset positions, pad id 1)."""

    default_config: ClassVar[str] = "roberta_base"


__all__ = [
    "BertEncoder",
    "RobertaEncoder",
    "TextEncoder",
    "init_bert_weights",
    "key_mask_from_attention_mask",
]
