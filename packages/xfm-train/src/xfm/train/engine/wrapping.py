"""DDP / FSDP / ``torch.compile`` around the module a run trains, and the way back to it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from xfm.train import fsdp
from xfm.train.distributed import is_distributed

__all__ = ["Wrapped", "freeze_unreached", "unwrap", "wrap"]

Mode = Literal["none", "ddp", "fsdp"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


@dataclass
class Wrapped:
    """The wrapped module of a run.

    Attributes:
        mode: ``none``, ``ddp`` or ``fsdp`` (what was applied).
        trainable: the module whose parameters the optimizer steps (DDP wrapper, FSDP-sharded
            module or the module itself).
        forward: what a training forward calls (``trainable``, compiled when asked).
        staged: one process and no compile: one backward per forward stage is allowed.
        replicated: FSDP only: the scalar parameters kept replicated (their gradients are
            averaged explicitly, :func:`xfm.train.fsdp.sync_replicated_grads`).
    """

    mode: Mode
    trainable: nn.Module
    forward: Callable
    staged: bool
    replicated: list[nn.Parameter] = field(default_factory=list)


def resolve_mode(mode: str) -> Mode:
    """``auto`` -> ``ddp`` under a multi-rank process group, else ``none``; ``ddp``/``fsdp``
    without a process group -> ``none``."""
    if mode == "auto":
        return "ddp" if is_distributed() else "none"
    if mode in ("ddp", "fsdp") and not is_distributed():
        return "none"
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"distributed must be auto, none, ddp or fsdp; got {mode!r}")
    return mode  # type: ignore[return-value]


def wrap(
    module: nn.Module,
    device: torch.device,
    mode: str = "auto",
    compile: bool = False,
    find_unused_parameters: bool = False,
) -> Wrapped:
    """Wrap ``module`` for training: DDP or FSDP across ranks, then ``torch.compile``.

    ``find_unused_parameters`` is DDP's switch for modules whose parameters a step may not
    reach (fine-tuning losses); pretraining freezes those explicitly instead
    (:func:`freeze_unreached`) and leaves it off.
    """
    resolved = resolve_mode(mode)
    trainable: nn.Module = module
    replicated: list[nn.Parameter] = []
    if resolved == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        trainable = nn.parallel.DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=find_unused_parameters
        )
    elif resolved == "fsdp":
        replicated = fsdp.shard(module)
    forward = torch.compile(trainable) if compile else trainable
    return Wrapped(resolved, trainable, forward, resolved == "none" and not compile, replicated)


def freeze_unreached(model: nn.Module, total: torch.Tensor) -> list[str]:
    """Set ``requires_grad=False`` on the parameters of ``model`` that ``total`` does not reach.

    ``total`` is the loss of one probe step (the caller restores data and RNG state after it),
    so that DDP needs no ``find_unused_parameters``. Returns the frozen parameter names.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    names = {id(p): n for n, p in model.named_parameters()}
    frozen = []
    for p, g in zip(params, grads):
        if g is None:
            p.requires_grad_(False)
            frozen.append(names[id(p)])
    return frozen


def frozen_groups(names: list[str]) -> list[str]:
    """Module prefixes of frozen parameter names (for a one-line report)."""
    return sorted({re.sub(r"\.\d+\..*|\.(weight|bias)$", "", n) for n in names})
