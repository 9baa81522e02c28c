"""Pre-LayerNorm ViT block (BEiT / ViT) with fused qkv, layer scale and stochastic depth."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xfm.core.attention import Backend, attention
from xfm.core.dropout import Dropout
from xfm.core.layers.cpu_gemm import Linear, linear
from xfm.core.layers.drop_path import DropPath
from xfm.core.layers.mlp import Mlp
from xfm.core.layers.residual import residual_add

QKVBias = Literal["qkv", "qv", "none"]


class FusedQKVAttention(nn.Module):
    """Self-attention with one ``qkv`` projection, as ViT and BEiT use.

    ``qkv_bias``: ``"qkv"`` (ViT: a bias in the ``qkv`` Linear), ``"qv"`` (BEiT: separate
    ``q_bias`` and ``v_bias`` parameters, no key bias) or ``"none"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: QKVBias = "qkv",
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        if qkv_bias not in ("qkv", "qv", "none"):
            raise ValueError(f"qkv_bias must be 'qkv', 'qv' or 'none'; got {qkv_bias!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        self.q_bias: nn.Parameter | None = None
        self.v_bias: nn.Parameter | None = None
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
            self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.proj = Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_drop = Dropout(proj_dropout)
        self.backend = backend

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, N, D]``, ``bias`` additive ``[H, N, N]`` or ``[B, H, N, N]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        if self.q_bias is not None:
            qkv_b = torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = linear(x, self.qkv.weight, qkv_b)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(
            q,
            k,
            v,
            key_mask=key_mask,
            bias=bias,
            dropout_p=self.attn_dropout if self.training else 0.0,
            backend=self.backend,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class PreLNBlock(nn.Module):
    """``x = x + drop_path(gamma_1 * attn(norm1(x))); x = x + drop_path(gamma_2 * mlp(norm2(x)))``.

    ``layer_scale_init=None`` disables layer scale (plain ViT); BEiT uses 0.1. Submodules:
    ``norm1``, ``attn`` (:class:`FusedQKVAttention`), ``norm2``, ``mlp`` (``fc1``, ``fc2``),
    parameters ``gamma_1``, ``gamma_2``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: QKVBias = "qkv",
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
        act: str = "gelu",
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = FusedQKVAttention(dim, num_heads, qkv_bias, attn_dropout, dropout, backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, dropout=dropout)
        self.drop_path = DropPath(drop_path)
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, N, D]`` -> ``[B, N, D]``; ``attn_bias`` e.g. a relative position bias."""
        p, training = self.drop_path.p, self.training
        h = self.attn(self.norm1(x), bias=attn_bias, key_mask=key_mask)
        x = residual_add(x, h, self.gamma_1, p, training)
        return residual_add(x, self.mlp(self.norm2(x)), self.gamma_2, p, training)
