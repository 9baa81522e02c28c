"""The residual update of a pre-LN block, ``x + drop_path(gamma * branch)``, in two passes.

Written out, the update is five elementwise passes over ``[B, N, D]`` in the forward (under bf16
autocast: the branch cast to fp32, ``* gamma``, ``* mask``, ``/ keep``, ``+ x``) and about as many
in the backward, each into a freshly allocated tensor. :func:`residual_add` folds layer scale and
the per-sample stochastic-depth factor into one small ``[B, 1, D]`` scale, adds with one
``addcmul`` and writes the branch gradient in the branch's dtype directly. It keeps the branch in
its own dtype for the backward (not an fp32 copy of it).
"""

from __future__ import annotations

import torch


class _ScaledResidual(torch.autograd.Function):
    """``x + branch * scale`` (``scale`` broadcastable to ``branch``; result in the promoted dtype)."""

    @staticmethod
    def forward(ctx, x, branch, scale):
        ctx.save_for_backward(branch, scale)
        return torch.addcmul(x, branch, scale)

    @staticmethod
    def backward(ctx, grad):
        branch, scale = ctx.saved_tensors
        grad_branch = grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_branch = torch.mul(grad, scale, out=torch.empty_like(branch))
        if ctx.needs_input_grad[2]:
            grad_scale = (grad * branch).sum_to_size(scale.shape).to(scale.dtype)
        return grad, grad_branch, grad_scale


def residual_add(
    x: torch.Tensor,
    branch: torch.Tensor,
    gamma: torch.Tensor | None = None,
    drop_prob: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """``x + drop_path(gamma * branch)``.

    Args:
        x: the residual stream ``[B, ..., D]``.
        branch: the block's branch output, same shape (may be bf16 under autocast while ``x``
            is fp32).
        gamma: layer scale ``[D]`` or ``None``.
        drop_prob: stochastic depth rate; a whole sample's branch is dropped with this
            probability in training and kept samples are scaled by ``1 / (1 - drop_prob)``.
            The per-sample mask is drawn as :func:`xfm.core.layers.drop_path` draws it.
        training: apply stochastic depth.

    Returns:
        ``[B, ..., D]`` in the promoted dtype of ``x``, ``branch`` and ``gamma``.
    """
    scale = gamma
    if drop_prob > 0.0 and training:
        keep = 1.0 - drop_prob
        dtype = branch.dtype if gamma is None else torch.promote_types(gamma.dtype, branch.dtype)
        shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)
        sample = branch.new_empty(shape, dtype=dtype).bernoulli_(keep).div_(keep)
        scale = sample if gamma is None else gamma * sample
    if scale is None:
        return x + branch
    return _ScaledResidual.apply(x, branch, scale)


__all__ = ["residual_add"]
