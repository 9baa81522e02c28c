"""Linear layers whose fp32 CPU GEMMs can run on oneDNN instead of the BLAS.

PyTorch computes fp32 ``linear``/``mm`` on CPU with its BLAS (MKL in the official wheels) and
hands only bf16/fp16 to oneDNN. MKL takes an AVX2 code path on AMD CPUs, while oneDNN uses
AVX-512 there: on a 2-core AMD EPYC (Zen 5, ``avx512f``) a ``[3152, 384] x [384, 1536]`` fp32
GEMM ran at 206 GFLOP/s with MKL and 480 GFLOP/s with oneDNN (the input-gradient GEMM 2.2x, the
weight-gradient GEMM 1.5x faster), the same numbers to float rounding.

:func:`cpu_gemm_backend` picks the backend once per process: ``XFM_CPU_GEMM=onednn|blas``
forces one; by default (``auto``) oneDNN is used on AMD CPUs with AVX-512 and the BLAS
elsewhere (on Intel CPUs MKL has its full-width kernels). :func:`linear` and :func:`matmul`
route fp32 CPU products outside autocast to it (forward and backward); every other case (other
devices, autocast, other dtypes) is ``F.linear``/``torch.matmul`` unchanged. :class:`Linear` is
``nn.Linear`` (same parameters and state dict) on :func:`linear`.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "cpu_gemm_backend", "linear", "matmul"]

_BACKENDS = ("auto", "onednn", "blas")


@functools.cache
def _cpu_info() -> tuple[str, set[str]]:
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def cpu_gemm_backend() -> str:
    """``"onednn"`` or ``"blas"``: who computes fp32 CPU GEMMs in xfm layers (module docstring).

    An unknown ``XFM_CPU_GEMM`` value warns once and counts as ``auto``.
    """
    choice = os.environ.get("XFM_CPU_GEMM", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        warnings.warn(
            f"XFM_CPU_GEMM={choice!r} is not one of {', '.join(_BACKENDS)}; using auto",
            stacklevel=2,
        )
        choice = "auto"
    if choice == "blas" or not _onednn_available():
        return "blas"
    if choice == "onednn":
        return "onednn"
    vendor, flags = _cpu_info()
    return "onednn" if vendor == "AuthenticAMD" and "avx512f" in flags else "blas"


def _routed(*tensors: torch.Tensor | None) -> bool:
    """Non-empty fp32 CPU tensors outside autocast, and oneDNN chosen (oneDNN refuses empty
    products, so those stay with PyTorch)."""
    for t in tensors:
        if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() == 0):
            return False
    return not torch.is_autocast_enabled("cpu") and cpu_gemm_backend() == "onednn"


def _nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` on oneDNN: ``a`` ``[M, K]``, ``b`` ``[N, K]`` (any strides)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        ctx.shape = x.shape
        return _nt(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _nt(g, weight.t()).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _nt(g.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``[..., K]``, ``weight`` ``[N, K]`` -> ``[..., N]``,
    on oneDNN for fp32 CPU tensors outside autocast when :func:`cpu_gemm_backend` says so."""
    if x.dim() == 0 or not _routed(x, weight, bias):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` ``[M, K]`` and ``b`` ``[K, N]`` (oneDNN as :func:`linear`; no
    autograd on that path: for use inside autograd functions' forward/backward)."""
    if a.dim() != 2 or b.dim() != 2 or not _routed(a, b) or torch.is_grad_enabled():
        return a @ b
    return _nt(a, b.t())


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, init and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., in_features]`` -> ``[..., out_features]``."""
        return linear(x, self.weight, self.bias)
