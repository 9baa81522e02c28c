"""The fused biased attention path against xfm.core's eager reference (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from xfm.core.attention import attention
from xfm.vision.attention import (
    VisionAttention,
    biased_attention,
    set_fused_bias_path,
    use_fused_bias_path,
)


def _inputs(dtype=torch.float32, b=2, h=3, n=10, d=8):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    bias = torch.randn(h, n, n, generator=g).requires_grad_()
    return q, k, v, bias


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_biased_attention_equals_eager(dtype, tol):
    q, k, v, bias = _inputs(dtype)
    scale = q.shape[-1] ** -0.5
    got = biased_attention(q, k, v, bias, scale)
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v, bias))
    want = attention(q, k, v, bias=bias, backend="eager")
    ref_grads = torch.autograd.grad(want.float().square().sum(), (q, k, v, bias))
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol)


def test_path_selection():
    cpu = torch.device("cpu")
    learned = torch.zeros(2, 3, 3, requires_grad=True)
    assert use_fused_bias_path("eager", learned, cpu)
    assert use_fused_bias_path("sdpa", learned, cpu)
    assert not use_fused_bias_path("sdpa", learned.detach(), cpu)  # SDPA's flash kernel
    assert not use_fused_bias_path("sdpa", None, cpu)
    assert not use_fused_bias_path("xformers", learned, cpu)
    assert not use_fused_bias_path("sdpa", learned, torch.device("cuda"))
    with torch.no_grad():
        assert not use_fused_bias_path("sdpa", learned, cpu)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_vision_attention_matches_core_path(backend):
    attn = VisionAttention(24, 3, qkv_bias="qv", backend=backend)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 7, 24)
    bias = torch.randn(3, 7, 7, requires_grad=True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    fused = attn(x, bias=bias)
    # a key mask (here all True for row 0) routes through xfm.core.attention
    core = attn(x, bias=bias, key_mask=torch.ones(2, 7, dtype=torch.bool))
    torch.testing.assert_close(fused, core, atol=1e-6, rtol=1e-5)
    assert attn(x, bias=bias, key_mask=mask).shape == (2, 7, 24)
    set_fused_bias_path(False)
    try:
        assert not use_fused_bias_path(backend, bias, x.device)
        torch.testing.assert_close(attn(x, bias=bias), fused, atol=1e-6, rtol=1e-5)
    finally:
        set_fused_bias_path(True)
