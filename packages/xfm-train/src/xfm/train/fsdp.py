"""FSDP (``distributed: fsdp``) for the pretraining loss module, on PyTorch's ``fully_shard``.

The whole :class:`~xfm.train.loss.PretrainLoss` is one FSDP unit: parameters, gradients and
AdamW states are sharded across ranks at rest (dim 0) and all-gathered for the step's forward
and backward. One unit (rather than one per layer) because the encoders' layers run several
times per step (two vision passes, four fusion passes); it already removes the replicated
optimizer states, which dominate at rest. ``fully_shard`` runs on CPU with gloo as on CUDA with
NCCL (the older ``FullyShardedDataParallel`` needs an accelerator).

Scalar parameters (the ITC temperature ``temp``, whose official shape is ``[]``) cannot be
sharded: they stay replicated and their gradients are averaged across ranks explicitly
(:func:`sync_replicated_grads`), as DDP would.

Checkpoints hold full (unsharded) tensors: the model state in our names and the optimizer state
keyed by parameter name, written by rank 0 and loadable on any number of ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "full_model_state",
    "full_optimizer_state",
    "load_full_state",
    "shard",
    "sync_replicated_grads",
    "unsharded",
]

_PREFIX = "model."  # PretrainLoss holds the XFM as ``.model``


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def shard(loss_module: nn.Module) -> list[nn.Parameter]:
    """``fully_shard`` the loss module in place; return the replicated (scalar) parameters."""
    from torch.distributed.fsdp import fully_shard

    scalars = [p for p in loss_module.parameters() if p.dim() == 0]
    fully_shard(loss_module, ignored_params=set(scalars) or None)
    return [p for p in scalars if p.requires_grad]


def sync_replicated_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of the replicated parameters over the ranks."""
    if not params or not dist.is_initialized():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Gather the full parameters for code that calls the model outside the FSDP forward
    (zero-shot evaluation); shard them again afterwards."""
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full model state (CPU tensors, our names) on rank 0, ``{}`` elsewhere. Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(module, options=_options(cpu_offload=True))
    return {k.removeprefix(_PREFIX): v for k, v in full.items()}


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name, on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True))


def load_full_state(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load full states (as written by the two functions above) into the sharded module and
    its optimizer; every rank passes the same full states. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not isinstance(optimizer_state.get("state"), dict) or not any(
        isinstance(k, str) for k in optimizer_state["state"]
    ):
        raise ValueError(
            "the checkpoint's optimizer state is not keyed by parameter name: it was not written "
            "by an FSDP run (resume with the distributed mode it was written with)"
        )
    set_model_state_dict(
        module, {_PREFIX + k: v for k, v in model_state.items()}, options=_options()
    )
    set_optimizer_state_dict(module, optimizer, optimizer_state, options=_options())
