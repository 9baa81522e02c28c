"""Dropout whose CPU masks come from 64-bit random words, two mask elements per word.

On CPU, ``nn.Dropout`` draws its mask with ``bernoulli_``: one call of the (serial) Mersenne
Twister per element, in a single-threaded loop while the other intra-op threads wait. BERT-style
layers drop after every sublayer and inside attention, so a small-config X-FM step draws ~150
masks (measured 0.75 ms for a ``[16, 30, 384]`` mask with ``bernoulli_``, 0.40 ms with
``rand < p``, 0.27 ms here, 2 threads). :func:`dropout_mask` fills ``ceil(n / 2)`` int64 words
with full-range random bits (one generator call each) and compares their 32-bit halves with a
threshold: each element is dropped with probability ``round(p * 2**32) / 2**32`` (within
``2**-33`` of ``p``), independently. The masks come from the default generator, so
``torch.manual_seed`` still makes runs repeat. On other devices the masks are ``rand < p``.

:class:`Dropout` is ``nn.Dropout`` (same ``p``, ``inplace``, no state) with such masks on CPU;
it keeps the mask as ``bool`` for the backward (one byte per element, not a float noise tensor).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Dropout", "dropout", "dropout_mask"]


def dropout_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device
) -> torch.Tensor:
    """Bool mask of ``shape``: ``True`` (dropped) with probability ``p``, from the default
    generator of ``device``."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.rand(shape, device=device) < p
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)
    threshold = round(p * 2**32) - 2**31  # P(int32 < threshold) = round(p * 2**32) / 2**32
    return (words.view(torch.int32)[:n] < threshold).view(shape)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        drop = dropout_mask(x.shape, p, x.device)
        ctx.save_for_backward(drop)
        ctx.scale = 1.0 / (1.0 - p)
        return x.masked_fill(drop, 0.0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0.0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with :func:`dropout_mask` masks on CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1); got {p}")
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, True)
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from :func:`dropout_mask` (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[...]`` -> same shape; identity in eval mode or with ``p == 0``."""
        if x.device.type != "cpu" or self.p == 1.0:
            return super().forward(x)
        return dropout(x, self.p, self.training)
