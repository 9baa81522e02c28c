"""Masked-language-model head of the language encoder, tied to its word embeddings."""

from __future__ import annotations

import torch
from torch import nn

from xfm.core.layers import MLMHead as _CoreMLMHead
from xfm.core.layers import take_positions
from xfm.text.config import TextEncoderConfig


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Pick ``hidden[b, positions[b, m]]``: ``[B, T, D]``, ``[B, M]`` -> ``[B, M, D]``.

    Raises:
        ValueError: ``positions`` is not ``[B, M]`` or indexes outside ``[0, T)``.
    """
    if positions.dim() != 2 or positions.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"positions must be [B, M] with B={hidden.shape[0]}; got {tuple(positions.shape)}"
        )
    t = hidden.shape[1]
    if positions.numel():
        low, high = (int(v) for v in torch.aminmax(positions))
        if low < 0 or high >= t:
            raise ValueError(f"positions must be in [0, T={t}); got values in [{low}, {high}]")
    return take_positions(hidden, positions)


class MLMHead(_CoreMLMHead):
    """BERT/RoBERTa LM head ``decoder(LayerNorm(act(dense(h)))) + bias``: ``[..., D]`` ->
    ``[..., V]``, on :class:`xfm.core.layers.MLMHead` (same parameter names: ``dense``,
    ``layer_norm``, ``decoder`` without bias, ``bias``), with BERT initialisation, tying to an
    ``nn.Embedding`` and decoding of selected positions only.

    Args:
        width: hidden size ``D``.
        vocab_size: number of output classes ``V``.
        eps: LayerNorm epsilon.
        act: activation (``gelu`` = exact GELU, as BERT and RoBERTa).
        tie_to: a word embedding ``nn.Embedding(V, D)`` whose weight becomes the decoder weight
            (the same ``Parameter``); ``None`` gives the head its own decoder weight.
        init_std: standard deviation of the normal initialisation of ``dense`` and an untied
            ``decoder``.
    """

    def __init__(
        self,
        width: int,
        vocab_size: int,
        *,
        eps: float = 1e-12,
        act: str = "gelu",
        tie_to: nn.Embedding | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(width, vocab_size, eps=eps, act=act)
        nn.init.normal_(self.dense.weight, std=init_std)
        nn.init.zeros_(self.dense.bias)
        nn.init.normal_(self.decoder.weight, std=init_std)
        if tie_to is not None:
            self.tie_weights(tie_to)

    @classmethod
    def for_encoder(cls, encoder: nn.Module, *, tie: bool = True) -> MLMHead:
        """A head sized for ``encoder`` (anything with a ``config: TextEncoderConfig`` and
        ``embeddings.word``), tied to its word embeddings unless ``tie=False``."""
        config: TextEncoderConfig = encoder.config  # type: ignore[assignment]
        word = encoder.embeddings.word  # type: ignore[union-attr]
        return cls(
            config.width,
            config.vocab_size,
            eps=config.layer_norm_eps,
            act=config.act,
            tie_to=word if tie else None,  # type: ignore[arg-type]
            init_std=config.init_std,
        )

    def tie_weights(self, embedding: nn.Embedding) -> None:
        """Share ``embedding.weight`` ``[V, D]`` as the decoder weight."""
        if tuple(embedding.weight.shape) != tuple(self.decoder.weight.shape):
            raise ValueError(
                f"cannot tie the MLM decoder {tuple(self.decoder.weight.shape)} to an embedding "
                f"of shape {tuple(embedding.weight.shape)}: expected [vocab_size, width]"
            )
        self.decoder.weight = embedding.weight

    def is_tied_to(self, embedding: nn.Embedding) -> bool:
        """Whether the decoder weight is ``embedding.weight`` (the same ``Parameter``)."""
        return self.decoder.weight is embedding.weight

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the vocabulary.

        Args:
            hidden: ``[B, T, D]`` (or any ``[..., D]``) encoder states.
            positions: optional ``[B, M]`` positions to predict (e.g. the padded
                ``masked_pos`` of the masking functions); then only those are decoded.

        Returns:
            ``[B, T, V]``, or ``[B, M, V]`` with ``positions``.
        """
        if positions is not None:
            hidden = gather_positions(hidden, positions)
        return super().forward(hidden)


__all__ = ["MLMHead", "gather_positions"]
