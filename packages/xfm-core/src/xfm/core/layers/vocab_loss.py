"""Cross-entropy over a vocabulary fused with the projection to it (MLM decoders).

``F.cross_entropy(hidden @ weight.T + bias, labels)`` written out keeps and rewrites several
``[K, V]`` tensors (``V`` = 50,265 for RoBERTa, so 48 MB for 240 masked tokens in fp32): the
logits, the logits plus bias, the log-probabilities, a zero-filled gradient that the NLL
backward scatters into, and the log-softmax gradient; under autocast also a bf16 copy of the
``[V, D]`` weight every forward, its gradient cast back, and the logits cast to fp32.
:func:`vocab_cross_entropy` computes the same mean loss keeping one ``[K, V]`` tensor: the
logits (bias folded into the GEMM), from which the backward forms ``softmax - onehot`` in place.

Under autocast the projection runs in the autocast dtype (as ``F.linear`` would) and the
softmax in fp32, with the same losses as the unfused form; without autocast everything is fp32.
Measured on a 2-core AVX-512 CPU for ``K=240, D=384, V=50265`` (forward + backward): 206 ms
instead of 243 ms in fp32, 110 ms instead of 175 ms under bf16 autocast.
"""

from __future__ import annotations

import torch

from xfm.core.layers.cpu_gemm import linear, matmul

__all__ = ["vocab_cross_entropy"]


def _compute_dtype(device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


class _VocabCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            logits = linear(h, w, b).float()
            lse = torch.logsumexp(logits, dim=1)
            picked = logits.gather(1, labels[:, None]).squeeze(1)
            loss = (lse - picked).mean()
        ctx.save_for_backward(h, w, logits, lse, labels)
        ctx.has_bias = bias is not None
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.used:
            raise RuntimeError(
                "vocab_cross_entropy: its backward reuses the logits in place; "
                "it cannot run twice (retain_graph)"
            )
        ctx.used = True
        h, w, logits, lse, labels = ctx.saved_tensors
        rows = torch.arange(labels.shape[0], device=labels.device)
        with torch.autocast(h.device.type, enabled=False):
            p = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' buffer
            p[rows, labels] -= 1.0
            p.mul_(grad / labels.shape[0])
            g = p.to(h.dtype)
            grad_h = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_h = matmul(g, w).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_w = matmul(g.t(), h).to(ctx.dtypes[1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = p.sum(0).to(ctx.dtypes[2])
        return grad_h, grad_w, grad_b, None, None


def vocab_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, labels)`` (mean over rows), fused.

    Args:
        hidden: ``[K, D]`` decoder inputs (one row per predicted token).
        weight: ``[V, D]`` decoder weight (e.g. tied word embeddings).
        bias: ``[V]`` or ``None``.
        labels: ``[K]`` class ids in ``[0, V)`` (no ignored entries: select valid rows first).

    Returns:
        Scalar fp32 loss; a graph-connected zero when ``K == 0``.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"vocab_cross_entropy needs hidden [K, D] and labels [K]; got "
            f"{tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0 + weight.sum() * 0.0
    return _VocabCrossEntropy.apply(hidden, weight, bias, labels, _compute_dtype(hidden.device))
