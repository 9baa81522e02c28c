"""Attention with a hand-written backward for the CPU training cases SDPA runs on its math kernel.

On CPU, ``scaled_dot_product_attention`` has a fused (flash) kernel only without attention
dropout and without a bias that needs a gradient. Training BERT-style layers (dropout 0.1 on the
probabilities) or BEiT blocks (a learned relative position bias) therefore falls back to SDPA's
*math* kernel, which keeps scaled copies of ``q`` and ``k``, the probabilities before and after
dropout and a float dropout mask for the backward: about five ``[B, H, Tq, Tk]``-or-``[B, H,
T, Dh]`` tensors per call. :func:`lean_attention` computes the same function and keeps only

* ``q``, ``k``, ``v`` as given (no copies: cross-attention keys/values that several fusion
  passes reuse are stored once),
* the probabilities ``P`` ``[B, H, Tq, Tk]`` and the output ``[B, H, Tq, Dv]``,
* the dropout keep-mask as ``bool`` (one byte per element),

and its backward is the textbook one (``dS = P * (dP - rowsum(dO * O))``), with the bias gradient
``dS`` summed to the bias's shape.

It is xfm's one path for attention with a bias that needs a gradient on CPU (BEiT's learned
relative position bias included: xfm-vision calls :func:`xfm.core.attention.attention` like every
encoder). A former vision-only variant that wrote the bias into the score buffer and let
``baddbmm`` accumulate ``q k^T`` onto it, with autograd's backward, was measured beside this one
at the small config's vision shapes (B=16, H=6, N=197, Dh=64, forward + backward) and was
1.1-1.3x slower in fp32 and bf16, so it was removed. Dropout keep-masks are drawn with :func:`dropout_keep_mask`
(``rand >= p`` from the default generator); the output is scaled by ``1 / (1 - p)``.
"""

from __future__ import annotations

import torch

__all__ = ["dropout_keep_mask", "lean_attention"]


def dropout_keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool keep-mask of attention dropout: ``True`` with probability ``1 - p``."""
    return torch.rand(shape, device=device) >= p


def _dropped(probs: torch.Tensor, keep: torch.Tensor | None, p: float) -> torch.Tensor:
    """The probabilities after dropout (``probs`` itself without a keep-mask)."""
    if keep is None:
        return probs
    return (probs * keep).mul_(1.0 / (1.0 - p))


class _LeanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, dropout_p: float):
        scores = torch.matmul(q, k.transpose(-2, -1))
        scores.mul_(scale)
        if bias is not None:
            scores.add_(bias)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        del scores
        keep = dropout_keep_mask(probs.shape, dropout_p, probs.device) if dropout_p > 0 else None
        out = torch.matmul(_dropped(probs, keep, dropout_p), v)
        ctx.save_for_backward(q, k, v, probs, out, keep)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, out, keep = ctx.saved_tensors
        scale, p = ctx.scale, ctx.dropout_p
        grad_out = grad_out.to(q.dtype)
        grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.matmul(_dropped(probs, keep, p).transpose(-2, -1), grad_out)
        grad_probs = torch.matmul(grad_out, v.transpose(-2, -1))  # [B, H, Tq, Tk]
        if keep is not None:
            grad_probs.mul_(keep).mul_(1.0 / (1.0 - p))
        # softmax backward: dS = P * (dP - sum_j P_j dP_j) and sum_j P_j dP_j = dO . O
        row = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grad_scores = grad_probs.float().sub_(row).mul_(probs).to(q.dtype)
        del grad_probs
        grad_bias = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape)
        # (the bias gradient may be grad_scores itself: scale the small q/k gradients instead)
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.matmul(grad_scores, k).mul_(scale)
        if ctx.needs_input_grad[1]:
            grad_k = torch.matmul(grad_scores.transpose(-2, -1), q).mul_(scale)
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
        q: ``[B, H, Tq, Dh]``.
        k: ``[B, H, Tk, Dh]``.
        v: ``[B, H, Tk, Dv]``.
        bias: additive scores broadcastable to ``[B, H, Tq, Tk]`` (padding/causal masks folded
            in; may require grad) or ``None``.
        scale: score scale.
        dropout_p: attention dropout on the probabilities (training).

    Returns:
        ``[B, H, Tq, Dv]``; softmax in float32 as the eager backend.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    return _LeanAttention.apply(q, k, v, bias, float(scale), float(dropout_p))
