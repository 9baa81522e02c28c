"""Two-layer feed-forward network (``fc1 -> act -> dropout -> fc2``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)
        self.act_name = act
        self.act = get_activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))
