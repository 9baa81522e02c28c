"""Two-layer feed-forward network (``fc1 -> act -> dropout -> fc2``).

In training with the exact GELU and no dropout between the two layers (BERT, RoBERTa, BEiT),
``fc2(gelu(h))`` runs as one autograd node that keeps only ``h`` and recomputes ``gelu(h)`` in
its backward: autograd would otherwise keep both ``h`` (for the GELU) and ``gelu(h)`` (for
``fc2``'s weight gradient), two ``[..., 4D]`` tensors per layer. Same numbers, one elementwise
pass more in backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.dropout import Dropout
from xfm.core.layers.cpu_gemm import Linear, linear, matmul

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU, as BERT, RoBERTa and BEiT use
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation function by name (``gelu`` = exact erf GELU)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}: expected one of {sorted(_ACTIVATIONS)}"
        ) from None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` keeping ``h`` only (``gelu(h)`` recomputed)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            act = F.gelu(h)
            grad_w = matmul(g2.t(), act.reshape(-1, h.shape[-1]))
            del act
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        if ctx.needs_input_grad[0]:
            grad_x = matmul(g2, weight).view(h.shape)
            grad_h = torch.ops.aten.gelu_backward(grad_x, h, approximate="none")
        return grad_h, grad_w, grad_b


class Mlp(nn.Module):
    """``[..., D] -> fc1 -> act -> dropout -> fc2 -> [..., D_out]``."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        act: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim, bias=bias)
        self.fc2 = Linear(hidden_dim, out_dim or dim, bias=bias)
        self.act_name = act
        self.act = get_activation(act)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., D]`` -> ``[..., D_out]``."""
        h = self.fc1(x)
        if (
            self.act_name == "gelu"
            and torch.is_grad_enabled()
            and not (self.training and self.drop.p > 0.0)
            and not torch.is_autocast_enabled(h.device.type)
        ):
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.drop(self.act(h)))
