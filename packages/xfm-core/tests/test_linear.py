"""``xfm.core.layers.cpu_gemm``: the oneDNN fp32 CPU path against ``F.linear``, and its switch."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.layers import Linear, cpu_gemm_backend, linear

linear_module = importlib.import_module("xfm.core.layers.cpu_gemm")


@pytest.fixture
def backend(monkeypatch):
    """Force a backend for one test (the choice is cached per process)."""

    def use(name: str) -> str:
        monkeypatch.setenv("XFM_CPU_GEMM", name)
        cpu_gemm_backend.cache_clear()
        return cpu_gemm_backend()

    yield use
    cpu_gemm_backend.cache_clear()


needs_onednn = pytest.mark.skipif(
    not linear_module._onednn_available(), reason="this torch has no oneDNN linear"
)


@needs_onednn
@pytest.mark.parametrize(
    ("shape", "out", "bias"),
    [((5, 7, 24), 40, True), ((33, 16), 8, False), ((2, 3, 4, 12), 20, True)],
)
def test_onednn_path_equals_f_linear_forward_and_backward(backend, shape, out, bias) -> None:
    assert backend("onednn") == "onednn"
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, requires_grad=True)
    w = torch.randn(out, shape[-1], generator=gen, requires_grad=True)
    b = torch.randn(out, generator=gen, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    got = linear(x, w, b)
    assert got.grad_fn is not None and "OneDNN" in type(got.grad_fn).__name__
    want = F.linear(x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn(want.shape, generator=gen)
    for a, e in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_autocast_other_dtypes_and_blas_take_f_linear(backend) -> None:
    backend("onednn")
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16  # autocast's own (bf16) GEMM
    assert "OneDNN" not in type(linear(x.double(), w.double()).grad_fn).__name__
    backend("blas")
    assert "OneDNN" not in type(linear(x, w).grad_fn).__name__


@needs_onednn
def test_empty_products_stay_with_pytorch(backend) -> None:
    """oneDNN refuses empty GEMMs (e.g. an MLM batch without masked tokens)."""
    from xfm.core.layers.cpu_gemm import matmul

    backend("onednn")
    x, w = torch.randn(0, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    y = linear(x, w)
    y.sum().backward()
    assert y.shape == (0, 4) and not w.grad.any()
    assert matmul(torch.randn(0, 3), torch.randn(3, 5)).shape == (0, 5)
    assert not matmul(torch.randn(4, 0), torch.randn(0, 5)).any()


def test_backend_choice(backend, monkeypatch) -> None:
    assert backend("blas") == "blas"
    monkeypatch.setattr(linear_module, "_onednn_available", lambda: True)
    assert backend("onednn") == "onednn"
    monkeypatch.setattr(linear_module, "_cpu_info", lambda: ("AuthenticAMD", {"avx512f"}))
    assert backend("auto") == "onednn"
    monkeypatch.setattr(linear_module, "_cpu_info", lambda: ("GenuineIntel", {"avx512f"}))
    assert backend("auto") == "blas"
    monkeypatch.setattr(linear_module, "_cpu_info", lambda: ("AuthenticAMD", {"avx2"}))
    assert backend("auto") == "blas"
    with pytest.warns(UserWarning, match="XFM_CPU_GEMM='fast'"):
        assert backend("fast") == "blas"


def test_linear_module_is_an_nn_linear_with_the_same_state_dict() -> None:
    torch.manual_seed(0)
    ours = Linear(6, 4)
    ref = nn.Linear(6, 4)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Linear) and set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
