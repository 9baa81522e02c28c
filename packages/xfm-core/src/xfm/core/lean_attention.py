"""Attention with a hand-written backward for the CPU training cases SDPA runs on its math kernel.

On CPU, ``scaled_dot_product_attention`` has a fused (flash) kernel only without attention
dropout and without a bias that needs a gradient. Training BERT-style layers (dropout 0.1 on the
probabilities) or BEiT blocks (a learned relative position bias) therefore falls back to SDPA's
*math* kernel, which keeps scaled copies of ``q`` and ``k``, the probabilities before and after
dropout and a float dropout mask for the backward: about five ``[B, H, Tq, Tk]``-or-``[B, H,
T, Dh]`` tensors per call. :func:`lean_attention` computes the same function and keeps only

* ``q``, ``k``, ``v`` with their batch and head dimensions merged (``[B*H, T, Dh]``: a view of
  the input where its strides allow, else one copy, which the backward reuses),
* the probabilities ``P`` ``[B, H, Tq, Tk]`` (in the compute dtype),
* the dropout mask as ``bool`` (one byte per element).

Every matrix product is one ``bmm``/``baddbmm`` over the merged batch (no per-product layout
copies), the score scale is the GEMM's ``alpha`` and a bias is the GEMM's accumulator
(``scores = bias + scale * q k^T`` in one pass), the softmax and its backward are PyTorch's own
kernels in the compute dtype (for bf16 they accumulate in fp32 internally, so no
``[B, H, Tq, Tk]`` casts to fp32 and back), and the backward is the textbook one
(``dS = P * (dP - rowsum(P * dP))``) with the bias gradient ``dS`` summed to the bias's shape.

It is xfm's one path for attention with a bias that needs a gradient on CPU (BEiT's learned
relative position bias included: xfm-vision calls :func:`xfm.core.attention.attention` like every
encoder). Dropout masks are drawn with :func:`xfm.core.dropout.dropout_mask` (random
words from the default generator, two mask elements per word); kept probabilities are scaled by
``1 / (1 - p)``.
"""

from __future__ import annotations

import torch

from xfm.core.dropout import dropout_mask

__all__ = ["dropout_mask", "lean_attention"]


def _dropped(probs: torch.Tensor, drop: torch.Tensor | None, p: float) -> torch.Tensor:
    """The probabilities after dropout (``probs`` itself without a mask); a new tensor."""
    if drop is None:
        return probs
    return probs.masked_fill(drop, 0.0).mul_(1.0 / (1.0 - p))


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B*H, T, D]`` (a view where the strides allow, else one copy)."""
    b, h, n, d = t.shape
    return t.reshape(b * h, n, d)


def _scores(
    q3: torch.Tensor, k3: torch.Tensor, bias: torch.Tensor | None, scale: float, heads: int
) -> torch.Tensor:
    """``bias + scale * q k^T`` as ``[B*H, Tq, Tk]`` in ``q3``'s dtype, one GEMM pass."""
    bh, tq, _ = q3.shape
    tk = k3.shape[1]
    if bias is None:  # beta=0: the uninitialised accumulator is ignored (NaN-safe)
        out = q3.new_empty(bh, tq, tk)
        return torch.baddbmm(out, q3, k3.transpose(1, 2), beta=0.0, alpha=scale, out=out)
    out = q3.new_empty(bh // heads, heads, tq, tk)
    out.copy_(bias.expand(out.shape))  # also casts an fp32 bias to the compute dtype
    out = out.view(bh, tq, tk)
    return out.baddbmm_(q3, k3.transpose(1, 2), alpha=scale)


class _LeanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, dropout_p: float):
        b, h, tq, _ = q.shape
        q3, k3, v3 = _merge_heads(q), _merge_heads(k), _merge_heads(v)
        probs = torch.softmax(_scores(q3, k3, bias, scale, h), dim=-1)
        drop = dropout_mask(probs.shape, dropout_p, probs.device) if dropout_p > 0 else None
        out = torch.bmm(_dropped(probs, drop, dropout_p), v3)
        ctx.save_for_backward(q3, k3, v3, probs, drop)
        ctx.scale, ctx.dropout_p, ctx.heads = scale, dropout_p, h
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(b, h, tq, v.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        q3, k3, v3, probs, drop = ctx.saved_tensors
        scale, p, h = ctx.scale, ctx.dropout_p, ctx.heads
        b = q3.shape[0] // h
        g3 = _merge_heads(grad_out.to(q3.dtype))  # one copy when the caller's grad is strided
        grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.bmm(_dropped(probs, drop, p).transpose(1, 2), g3)
            grad_v = grad_v.view(b, h, *grad_v.shape[1:])
        grad_probs = torch.bmm(g3, v3.transpose(1, 2))  # [B*H, Tq, Tk]
        if drop is not None:
            grad_probs.masked_fill_(drop, 0.0).mul_(1.0 / (1.0 - p))
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        grad_bias = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_scores.view(b, h, *grad_scores.shape[1:]).sum_to_size(ctx.bias_shape)
            grad_bias = grad_bias.to(ctx.bias_dtype)
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.bmm(grad_scores, k3).mul_(scale)
            grad_q = grad_q.view(b, h, *grad_q.shape[1:])
        if ctx.needs_input_grad[1]:
            grad_k = torch.bmm(grad_scores.transpose(1, 2), q3).mul_(scale)
            grad_k = grad_k.view(b, h, *grad_k.shape[1:])
        return grad_q, grad_k, grad_v, grad_bias, None, None


def lean_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``dropout(softmax(q k^T * scale + bias)) v`` keeping only what its backward needs.

    Args:
        q: ``[B, H, Tq, Dh]`` (any strides).
        k: ``[B, H, Tk, Dh]``.
        v: ``[B, H, Tk, Dv]``.
        bias: additive scores broadcastable to ``[B, H, Tq, Tk]`` (padding/causal masks folded
            in; may require grad; any float dtype, added in ``q``'s dtype) or ``None``.
        scale: score scale.
        dropout_p: attention dropout on the probabilities (training).

    Returns:
        ``[B, H, Tq, Dv]`` (contiguous) in ``q``'s dtype; the softmax accumulates in fp32.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")
    return _LeanAttention.apply(q, k, v, bias, float(scale), float(dropout_p))
