"""Multi-head self/cross attention with separate query/key/value projections."""

from __future__ import annotations

import torch
from torch import nn

from xfm.core.attention import Backend, attention
from xfm.core.layers.cpu_gemm import Linear


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` cast once to the autocast dtype when autocast is on for its device (else ``x``).

    Autocast casts the fp32 input of every ``Linear`` separately (and casts each gradient back):
    for ``x`` feeding several projections, one explicit cast is the same numbers with one cast.
    """
    device = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


class MultiHeadAttention(nn.Module):
    """Multi-head attention on :func:`xfm.core.attention.attention`.

    Queries come from ``x`` ``[B, Tq, D]``; keys and values from ``context`` ``[B, Tk, D_kv]``
    (``D_kv`` may differ from ``D``: cross-attention to another encoder) or from ``x`` itself.
    Parameters: ``query``, ``key``, ``value`` (``Linear``) and the output projection ``out``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_dim: int | None = None,
        bias: bool = True,
        attn_dropout: float = 0.0,
        out_proj: bool = True,
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kv_dim = kv_dim or dim
        self.query = Linear(dim, dim, bias=bias)
        self.key = Linear(self.kv_dim, dim, bias=bias)
        self.value = Linear(self.kv_dim, dim, bias=bias)
        self.out = Linear(dim, dim, bias=bias) if out_proj else nn.Identity()
        self.attn_dropout = attn_dropout
        self.backend = backend

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, Tk, Dh]`` for ``context`` ``[B, Tk, D_kv]``.

        Computing them once lets a caller reuse one image's keys/values for several text passes;
        they are made contiguous here, once, so that neither the attention kernels of every
        reuse nor rows picked from them (hard negatives) copy them again.
        """
        if context.shape[-1] != self.kv_dim:
            raise ValueError(
                f"attention context width must be {self.kv_dim}; got {context.shape[-1]} "
                f"(context shape {tuple(context.shape)})"
            )
        context = autocast_input(context)
        k = self._heads(self.key(context)).contiguous()
        return k, self._heads(self.value(context)).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        causal: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` ``[B, Tq, D]`` to ``context`` (or ``x``); returns ``[B, Tq, D]``.

        ``key_mask`` ``[B, Tk]`` (True = attend), ``bias`` additive ``[.., H, Tq, Tk]``, ``kv`` the
        precomputed result of :meth:`project_kv` (then ``context`` is ignored).
        """
        x = autocast_input(x)
        q = self._heads(self.query(x))
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        out = attention(
            q,
            k,
            v,
            key_mask=key_mask,
            bias=bias,
            causal=causal,
            dropout_p=self.attn_dropout if self.training else 0.0,
            backend=self.backend,
        )
        b, _, t, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, t, -1))
