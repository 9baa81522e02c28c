"""BERT-style post-LayerNorm transformer layer with optional cross-attention."""

from __future__ import annotations

import torch
from torch import nn

from xfm.core.attention import Backend
from xfm.core.dropout import Dropout
from xfm.core.layers.mha import MultiHeadAttention
from xfm.core.layers.mlp import Mlp
from xfm.core.layers.positions import take_positions


class PostLNLayer(nn.Module):
    """``x = LN(x + SelfAttn(x)); [x = LN(x + CrossAttn(x, ctx))]; x = LN(x + FFN(x))``.

    The layer of BERT/RoBERTa (text encoder), of the X-FM fusion encoder (with cross-attention
    from text queries to image keys/values of width ``cross_dim``) and of answer decoders
    (``causal=True`` in :meth:`forward`). Submodules: ``self_attn``, ``self_norm``,
    ``cross_attn``, ``cross_norm`` (when ``cross_attention``), ``ffn`` (``fc1``, ``fc2``),
    ``ffn_norm``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        cross_attention: bool = False,
        cross_dim: int | None = None,
        eps: float = 1e-12,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        act: str = "gelu",
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(
            dim, num_heads, attn_dropout=attn_dropout, backend=backend
        )
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn: MultiHeadAttention | None = None
        self.cross_norm: nn.LayerNorm | None = None
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                dim, num_heads, kv_dim=cross_dim or dim, attn_dropout=attn_dropout, backend=backend
            )
            self.cross_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = Mlp(dim, ffn_dim, act=act)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the layer.

        Args:
            x: ``[B, T, D]`` input states.
            key_mask: ``[B, T]`` bool, True for real tokens.
            context: ``[B, Tc, D_cross]`` states to cross-attend to (needed with cross-attention
                unless ``context_kv`` is given).
            context_mask: ``[B, Tc]`` bool, True for context positions that may be attended.
            causal: causal self-attention (decoders).
            context_kv: precomputed cross-attention keys/values ``([B, H, Tc, Dh], ...)``.
            positions: ``[B, M]`` the only positions whose outputs are wanted (e.g. the pair
                vector ``0`` or masked tokens, in a last layer): every position still serves as
                a self-attention key/value, but queries, cross-attention and FFN run on these
                ``M`` rows only (the same outputs there, less work).

        Returns:
            ``[B, T, D]``, or ``[B, M, D]`` with ``positions``.
        """
        if positions is None:
            h = self.self_attn(x, key_mask=key_mask, causal=causal)
        else:
            if causal:
                raise ValueError("positions= is not supported with causal self-attention")
            keys = x
            x = take_positions(x, positions)
            h = self.self_attn(x, context=keys, key_mask=key_mask)
        x = self.self_norm(x + self.drop(h))
        if self.cross_attn is not None:
            if context is None and context_kv is None:
                raise ValueError("this layer has cross-attention: pass `context` [B, Tc, D_cross]")
            h = self.cross_attn(x, context=context, key_mask=context_mask, kv=context_kv)
            x = self.cross_norm(x + self.drop(h))
        return self.ffn_norm(x + self.drop(self.ffn(x)))
