"""AdamW parameter groups (no decay on biases/norms, lr multiplier for new parameters) and the
linear warm-up / linear decay schedule."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

import torch
from torch import nn

from xfm.train.config import OptimSection

__all__ = ["build_optimizer", "build_scheduler", "lr_lambda", "param_groups"]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def param_groups(
    model: nn.Module, cfg: OptimSection, new_names: Collection[str] | None = None
) -> list[dict]:
    """Up to four groups: (decay | no decay) x (pretrained | new, ``lr_mult``).

    New parameters are those named in ``new_names`` when given (what ``init:`` left new,
    see :mod:`xfm.train.public_init`), else those matching ``cfg.new_params``.
    Each group holds ``params``, ``weight_decay``, ``lr_mult`` and ``names`` (for reports).
    Tied parameters appear once; frozen ones (``requires_grad=False``) are left out.
    """
    new_set = None if new_names is None else set(new_names)
    buckets: dict[tuple[bool, bool], dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = not _matches(name, cfg.no_decay) and p.ndim > 0
        new = _matches(name, cfg.new_params) if new_set is None else name in new_set
        group = buckets.setdefault(
            (decay, new),
            {
                "params": [],
                "names": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_mult": cfg.new_param_lr_mult if new else 1.0,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return [buckets[k] for k in sorted(buckets)]


def build_optimizer(
    model: nn.Module,
    cfg: OptimSection,
    device: torch.device,
    new_names: Collection[str] | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernel where supported, else foreach)."""
    groups = param_groups(model, cfg, new_names)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    fused = cfg.fused
    if fused is None:
        fused = device.type in ("cuda", "cpu")
    kwargs = {"fused": True} if fused else {"foreach": True}
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear 0->1 over ``warmup``, then linear to
    ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    frac = min(1.0, (step - warmup) / span)
    return max(min_ratio, 1.0 - (1.0 - min_ratio) * frac)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_lambda` (each group keeps its ``lr_mult``)."""
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup, total_steps, cfg.min_lr_ratio)
    )
