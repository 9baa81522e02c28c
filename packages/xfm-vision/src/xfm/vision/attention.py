"""Self-attention with a learned additive bias, on the fastest exact path for the backend.

BEiT's relative position bias is a learned ``[H, N, N]`` tensor that requires grad in training.
PyTorch's SDPA has no CPU kernel that returns a gradient for ``attn_mask``: with such a bias it
silently falls back to its *math* kernel (scale q and k, matmul, add, softmax, matmul; several
``[B, H, N, N]`` temporaries). :func:`biased_attention` computes the same function with the
bias fused into the score GEMM instead::

    scores = bias.expand(B, H, N, N).contiguous()          # one write of the bias
    scores.view(B*H, N, N).baddbmm_(q, k^T, alpha=scale)   # scores += scale * q k^T, in place
    out = softmax(scores) @ v

Autograd saves only ``q``, ``k``, ``v`` and the probabilities; the bias gradient is the score
gradient summed over the batch. :class:`VisionAttention` uses it

* for the ``eager`` backend (always: it is eager attention with one pass less), and
* for ``sdpa`` on CPU when the bias needs a gradient (where SDPA would run its math kernel).

Everywhere else (``sdpa`` without a bias gradient -> SDPA's flash kernel; CUDA; ``xformers``;
padding masks; attention dropout) it defers to :func:`xfm.core.attention.attention`. The result
equals the eager reference to float rounding (the tests check every backend against timm).
"""

from __future__ import annotations

import torch

from xfm.core.attention import resolve_backend
from xfm.core.layers import FusedQKVAttention

__all__ = ["VisionAttention", "biased_attention", "set_fused_bias_path", "use_fused_bias_path"]

_FUSED_ENABLED = True


def set_fused_bias_path(enabled: bool) -> None:
    """Turn the fused path off (``False``: always :func:`xfm.core.attention.attention`, e.g. to
    benchmark SDPA's math fallback) or back on (default)."""
    global _FUSED_ENABLED
    _FUSED_ENABLED = bool(enabled)


def biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` with the bias fused into the score GEMM.

    Args:
        q: ``[B, H, Tq, Dh]``.
        k: ``[B, H, Tk, Dh]``.
        v: ``[B, H, Tk, Dv]``.
        bias: additive scores broadcastable to ``[B, H, Tq, Tk]`` (e.g. ``[H, Tq, Tk]``); may
            require grad.
        scale: score scale (``Dh ** -0.5``).

    Returns:
        ``[B, H, Tq, Dv]`` in ``q``'s dtype (softmax in float32, as the eager backend).
    """
    b, h, tq, dh = q.shape
    tk = k.shape[2]
    scores = bias.to(q.dtype).expand(b, h, tq, tk).contiguous()
    scores.view(b * h, tq, tk).baddbmm_(
        q.reshape(b * h, tq, dh), k.reshape(b * h, tk, dh).transpose(1, 2), alpha=scale
    )
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


def use_fused_bias_path(backend: str, bias: torch.Tensor | None, device: torch.device) -> bool:
    """Whether :class:`VisionAttention` takes :func:`biased_attention` for this call."""
    if bias is None or not _FUSED_ENABLED:
        return False
    if backend == "eager":
        return True
    return (
        backend == "sdpa"
        and device.type == "cpu"
        and bias.requires_grad
        and torch.is_grad_enabled()
    )


class VisionAttention(FusedQKVAttention):
    """:class:`xfm.core.layers.FusedQKVAttention` (same parameters and names) whose biased
    self-attention runs :func:`biased_attention` where that is the fastest exact path
    (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, N, D]``, ``bias`` additive ``[H, N, N]`` or ``[B, H, N, N]`` -> ``[B, N, D]``."""
        dropout = self.attn_dropout if self.training else 0.0
        if key_mask is not None or dropout > 0.0:
            return super().forward(x, bias=bias, key_mask=key_mask)
        if not use_fused_bias_path(resolve_backend(self.backend, x), bias, x.device):
            return super().forward(x, bias=bias, key_mask=key_mask)
        b, n, d = x.shape
        if self.q_bias is not None:
            qkv_b = torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = torch.nn.functional.linear(x, self.qkv.weight, qkv_b)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = biased_attention(q, k, v, bias, self.head_dim**-0.5)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
