"""Shared fixtures of the xfm-vision tests.

Tests marked ``slow`` (the real base-size models against timm) run by default, as in CI;
``-m "not slow"`` leaves them out while iterating.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from xfm.core.attention import runnable_backends

#: The official X-FM golden vectors (a copy of ``../shared/golden`` kept in the repository by
#: xfm-fusion's tests, so they run in any checkout); ``XFM_GOLDEN_DIR`` points elsewhere.
GOLDEN_DIR = Path(
    os.environ.get(
        "XFM_GOLDEN_DIR",
        Path(__file__).resolve().parents[2] / "xfm-fusion" / "tests" / "data" / "golden",
    )
)
BACKENDS = runnable_backends("cpu")


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random, non-trivial value (zero-initialised tables and biases too).

    Linear/conv weights N(0,1)/sqrt(fan_in), norm weights 1+0.2N, biases 0.1N, layer scale
    U(0.05, 0.55), position tables/embeddings and tokens 0.5N (as the golden model).
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() >= 2 and leaf == "weight":
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        elif "norm" in name and leaf == "weight":
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif "gamma" in name:
            p.copy_(0.05 + 0.5 * torch.rand(p.shape, generator=g))
        elif p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def randomize() -> Callable[..., nn.Module]:
    return randomize_


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "model.safetensors").is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN_DIR} (set XFM_GOLDEN_DIR)")
    return GOLDEN_DIR


@pytest.fixture(autouse=True)
def _few_threads():
    # The CI machines have 2 cores; keep every test on them without oversubscription.
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)
