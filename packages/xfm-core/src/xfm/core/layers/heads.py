"""Prediction heads shared by encoders and models."""

from __future__ import annotations

import torch
from torch import nn

from xfm.core.layers.cpu_gemm import Linear
from xfm.core.layers.mlp import get_activation
from xfm.core.layers.vocab_loss import vocab_cross_entropy


class MLMHead(nn.Module):
    """BERT/RoBERTa language-model head: ``dense -> act -> LayerNorm -> decoder (+ bias)``.

    ``[.., D] -> [.., V]``. Pass ``tied_weight`` (the word embedding ``[V, D]``) to tie the
    decoder to an encoder's embeddings; otherwise the head owns its decoder weight.
    Parameters: ``dense``, ``layer_norm``, ``decoder`` (weight only), ``bias``.
    """

    def __init__(
        self,
        width: int,
        vocab_size: int,
        eps: float = 1e-12,
        act: str = "gelu",
        tied_weight: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        self.dense = Linear(width, width)
        self.act = get_activation(act)
        self.layer_norm = nn.LayerNorm(width, eps=eps)
        self.decoder = Linear(width, vocab_size, bias=False)
        if tied_weight is not None:
            if tuple(tied_weight.shape) != (vocab_size, width):
                raise ValueError(
                    f"tied decoder weight must be [{vocab_size}, {width}]; got {tuple(tied_weight.shape)}"
                )
            self.decoder.weight = tied_weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(act(dense(hidden)))``: ``[..., D]`` -> ``[..., D]`` (the decoder's input)."""
        return self.layer_norm(self.act(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` ``[..., D]`` -> logits ``[..., V]``."""
        return self.decoder(self.transform(hidden)) + self.bias

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of ``hidden`` ``[K, D]`` against ``labels`` ``[K]``
        (all valid), without materialising more than one ``[K, V]`` tensor
        (:func:`~xfm.core.layers.vocab_loss.vocab_cross_entropy`)."""
        return vocab_cross_entropy(self.transform(hidden), self.decoder.weight, self.bias, labels)


class MLPHead(nn.Sequential):
    """``Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, k)`` (X-FM ITM / bbox / task heads).

    Indices ``0, 1, 3`` hold the parameters, as in the official checkpoints.
    """

    def __init__(self, dim: int, out_dim: int, hidden_dim: int | None = None, eps: float = 1e-5):
        hidden = hidden_dim or 2 * dim
        super().__init__(
            Linear(dim, hidden),
            nn.LayerNorm(hidden, eps=eps),
            nn.GELU(),
            Linear(hidden, out_dim),
        )
