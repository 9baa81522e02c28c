"""Where a run executes: device, threads, seeds, process group and numeric precision.

Both ``xfm pretrain`` (:class:`xfm.train.trainer.Trainer`) and ``xfm finetune``
(:class:`xfm.tasks.finetune.Finetuner`) start here, through :class:`xfm.train.engine.Engine`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["Autocast", "autocast_factory", "make_scaler", "resolve_device", "seed_everything"]

#: A zero-argument factory of the autocast context of a run (``with autocast(): ...``).
Autocast = Callable[[], contextlib.AbstractContextManager]

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available (``LOCAL_RANK`` picks the GPU), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ``ValueError`` for an unknown precision or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")


def autocast_factory(device: torch.device, precision: str) -> Autocast:
    """The autocast context factory of ``precision`` on ``device`` (``fp32``: no autocast)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str) -> torch.amp.GradScaler | None:
    """A CUDA ``GradScaler`` for fp16 (``None`` otherwise: bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None
