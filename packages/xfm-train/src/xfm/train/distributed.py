"""Process-group helpers: rank/world queries, all-gather with gradient to the local shard."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "barrier",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group)."""
    return get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when distributed; no-op otherwise."""
    if is_distributed():
        dist.barrier()


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group from ``torchrun`` variables (``WORLD_SIZE`` > 1).

    Uses NCCL for CUDA devices and gloo otherwise. Returns True when a group was created.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def all_gather_no_grad(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` ``[B_r, ...]`` (sizes may differ along dim 0), without gradient."""
    if not is_distributed():
        return [x]
    sizes = _gather_sizes(x.shape[0], x.device)
    width = max(sizes)
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return [p[:n] for p, n in zip(parts, sizes)]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[B_r, ...]`` of all ranks in rank order -> ``[sum B_r, ...]``.

    The gradient flows back to the local shard only (the other ranks' rows are constants),
    as in the official X-FM/ALBEF ``AllGather``: every rank computes the same global loss
    and DDP averages the encoder gradients. Without a process group ``x`` is returned.
    """
    if not is_distributed():
        return x
    parts = all_gather_no_grad(x)
    parts[get_rank()] = x
    return torch.cat(parts, dim=0)
