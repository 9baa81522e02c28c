"""Word + position (+ token-type) embeddings of the BERT/RoBERTa language encoder."""

from __future__ import annotations

import torch
from torch import nn

from xfm.core.layers import Dropout
from xfm.text.config import TextEncoderConfig


def roberta_position_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """RoBERTa position ids ``[B, T]`` for ``input_ids`` ``[B, T]``.

    Real tokens are numbered ``pad_token_id + 1, pad_token_id + 2, ...`` in order (padding is
    skipped); padding tokens get ``pad_token_id``.
    """
    real = input_ids.ne(pad_token_id).long()
    return torch.cumsum(real, dim=1) * real + pad_token_id


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class TextEmbeddings(nn.Module):
    """``LayerNorm(word[ids] + position[pos] + token_type[types])`` then dropout.

    Submodules: ``word`` (``[V, D]``, the table the MLM decoder is tied to), ``position``
    (``[max_positions, D]``), ``token_type`` (``[type_vocab_size, D]``, absent when the size is 0),
    ``norm``, ``drop``.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.width
        self.word = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        roberta = config.position_style == "roberta"
        self.position = nn.Embedding(
            config.max_positions, d, padding_idx=config.pad_token_id if roberta else None
        )
        self.token_type: nn.Embedding | None = (
            nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.drop = Dropout(config.dropout)

    def position_ids(
        self, batch: int, length: int, device: torch.device, input_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Position ids ``[B, T]`` (``[1, T]`` when they do not depend on the ids).

        RoBERTa style: from ``input_ids`` (padding-aware, see :func:`roberta_position_ids`), or
        ``pad_token_id + 1 .. pad_token_id + T`` when only embeddings are given (as Hugging Face
        does). Absolute style: ``0 .. T-1``.
        """
        cfg = self.config
        if length > cfg.max_length:
            raise ValueError(
                f"sequence length {length} exceeds the position table of the text encoder: "
                f"at most {cfg.max_length} tokens (max_positions={cfg.max_positions}, "
                f"position_style={cfg.position_style!r}); truncate the input (the tokenizer's "
                "max_tokens does it)"
            )
        if cfg.position_style == "roberta":
            if input_ids is not None:
                return roberta_position_ids(input_ids, cfg.pad_token_id)
            start = cfg.pad_token_id + 1
            return torch.arange(start, start + length, device=device)[None]
        return torch.arange(length, device=device)[None]

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be [B, T] token ids; got shape {tuple(input_ids.shape)}"
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor; got {input_ids.dtype}")
        if _is_compiling() or input_ids.numel() == 0:
            return
        vocab = self.config.vocab_size
        bad = (input_ids < 0) | (input_ids >= vocab)
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            raise ValueError(
                f"token id {int(input_ids[where[0], where[1]])} at input_ids[{where[0]}, "
                f"{where[1]}] is outside the vocabulary of the text encoder: expected ids in "
                f"[0, {vocab}) ({int(bad.sum())} id(s) out of range)"
            )

    def _check_types(self, token_type_ids: torch.Tensor) -> None:
        if _is_compiling() or token_type_ids.numel() == 0:
            return
        n = self.config.type_vocab_size
        if bool(((token_type_ids < 0) | (token_type_ids >= n)).any()):
            raise ValueError(
                f"token_type_ids must be in [0, type_vocab_size={n}); got values in "
                f"[{int(token_type_ids.min())}, {int(token_type_ids.max())}]"
            )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``input_ids`` ``[B, T]`` (or add positions to ``inputs_embeds`` ``[B, T, D]``).

        Args:
            input_ids: token ids ``[B, T]``, each in ``[0, vocab_size)``.
            token_type_ids: segment ids ``[B, T]`` (default all 0).
            inputs_embeds: word embeddings ``[B, T, D]`` used instead of ``word[input_ids]``.
            position_ids: explicit position ids ``[B, T]`` (default: see :meth:`position_ids`).

        Returns:
            ``[B, T, D]``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and inputs_embeds [B, T, D]")
        if input_ids is not None:
            self._check_ids(input_ids)
            b, t = input_ids.shape
            device = input_ids.device
            x = self.word(input_ids)
        else:
            assert inputs_embeds is not None
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.width:
                raise ValueError(
                    f"inputs_embeds must be [B, T, {self.config.width}]; got "
                    f"{tuple(inputs_embeds.shape)}"
                )
            b, t, _ = inputs_embeds.shape
            device = inputs_embeds.device
            x = inputs_embeds
        if position_ids is None:
            position_ids = self.position_ids(b, t, device, input_ids)
        x = x + self.position(position_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                x = x + self.token_type.weight[0]
            else:
                if token_type_ids.shape != (b, t):
                    raise ValueError(
                        f"token_type_ids must be [B, T] = [{b}, {t}]; got "
                        f"{tuple(token_type_ids.shape)}"
                    )
                self._check_types(token_type_ids)
                x = x + self.token_type(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("this text encoder has no token-type embedding (type_vocab_size=0)")
        return self.drop(self.norm(x))


__all__ = ["TextEmbeddings", "roberta_position_ids"]
