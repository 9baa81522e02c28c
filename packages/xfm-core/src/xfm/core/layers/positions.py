"""Picking the states at given positions of each sequence."""

from __future__ import annotations

import torch

__all__ = ["take_positions"]


def take_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``states[b, positions[b, m]]``: ``[B, T, D]``, ``[B, M]`` -> ``[B, M, D]`` (a gather,
    differentiable in ``states``; positions are not checked)."""
    index = positions.long()[..., None].expand(-1, -1, states.shape[-1])
    return torch.gather(states, 1, index)
