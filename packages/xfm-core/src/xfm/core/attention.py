"""The one attention function used by every xfm encoder, with interchangeable backends.

``attention(q, k, v, ...)`` computes ``softmax(q k^T * scale + bias + mask) v`` for
``q: [B, H, Tq, Dh]`` and ``k, v: [B, H, Tk, Dh]`` with one of four backends:

``eager``
    Plain matmul + softmax. The reference the others are tested against.
``sdpa``
    ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / math
    kernels chosen by PyTorch). Default on CPU. Where SDPA would run its math kernel on CPU
    (training with attention dropout or with a bias that needs a gradient), the same function
    runs as :func:`xfm.core.lean_attention.lean_attention`, which keeps far less for backward.
``xformers``
    ``xformers.ops.memory_efficient_attention``. Its kernels are compiled for specific torch
    and CUDA versions; whether they really run is probed per input signature at run time and,
    when they do not, the call falls back to ``sdpa`` with a single warning.
``auto``
    ``xformers`` on CUDA when installed and its kernels run for these inputs, else ``sdpa``.

Masking semantics, identical for every backend:

* ``key_mask`` ``[B, Tk]`` (bool, ``True`` = attend) hides padded keys. Hidden keys get a large
  finite negative score, so rows that keep at least one key are exact (``exp`` underflows to 0);
  a query row whose keys are *all* hidden returns zeros and zero gradients (never NaN).
* ``bias`` is an additive float tensor broadcastable to ``[B, H, Tq, Tk]`` (for example the learned
  relative position bias ``[H, Tq, Tk]``); it may require grad.
* ``causal=True`` hides keys ``j > i`` (top-left aligned, as in a decoder's self-attention).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from xfm.core.lean_attention import lean_attention

Backend = Literal["auto", "eager", "sdpa", "xformers"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "sdpa", "xformers")

_state = threading.local()
_DEFAULT_BACKEND: str = "auto"
_XFORMERS_UNSUPPORTED: dict[tuple, str] = {}
_WARNED: set[str] = set()


def _validate_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: expected one of {BACKENDS}")
    return backend


def get_default_backend() -> str:
    """The backend used when a module or call passes ``backend=None``."""
    return getattr(_state, "backend", None) or _DEFAULT_BACKEND


def set_default_backend(backend: Backend) -> None:
    """Set the process-wide default attention backend (``auto`` unless changed)."""
    global _DEFAULT_BACKEND
    _DEFAULT_BACKEND = _validate_backend(backend)


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Temporarily select the default backend in this thread: ``with use_backend("eager"): ...``."""
    _validate_backend(backend)
    previous = getattr(_state, "backend", None)
    _state.backend = backend
    try:
        yield
    finally:
        _state.backend = previous


def _xformers_ops():
    try:
        import xformers.ops as xops
    except Exception:  # ImportError, or a broken binary build raising at import
        return None
    return xops


def xformers_available() -> bool:
    """True when ``xformers`` imports (its kernels may still be unusable: see module doc)."""
    return _xformers_ops() is not None


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _mask_value(dtype: torch.dtype) -> float:
    # Half of the most negative finite value: finite, so fully hidden rows never produce NaN, and
    # two such values (padding + causal) still add up to a finite number.
    return torch.finfo(dtype).min / 2


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention expects q, k, v of shape [B, H, T, Dh]; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            "attention shapes disagree: expected q [B, H, Tq, Dh], k [B, H, Tk, Dh], "
            f"v [B, H, Tk, Dv]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if key_mask is not None and (key_mask.dim() != 2 or key_mask.shape != (k.shape[0], k.shape[2])):
        raise ValueError(
            f"key_mask must be [B, Tk] = [{k.shape[0]}, {k.shape[2]}]; got {tuple(key_mask.shape)}"
        )


def _combined_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor | None:
    """Fold padding mask, causal mask and additive bias into one float tensor (or None)."""
    dtype = q.dtype
    out = None if bias is None else bias.to(dtype)
    neg = _mask_value(dtype)
    if key_mask is not None:
        pad = torch.zeros(key_mask.shape, dtype=dtype, device=q.device)
        pad = pad.masked_fill(~key_mask.bool(), neg)[:, None, None, :]  # [B, 1, 1, Tk]
        out = pad if out is None else out + pad
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        hide = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(1)
        cm = torch.zeros(tq, tk, dtype=dtype, device=q.device).masked_fill(hide, neg)
        out = cm if out is None else out + cm
    return out


def _zero_empty_rows(out: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the outputs of batch rows whose keys are all hidden. ``out``: [B, H, Tq, Dv]."""
    if key_mask is None:
        return out
    keep = key_mask.bool().any(dim=-1).to(out.dtype)[:, None, None, None]
    return out * keep


def _eager(q, k, v, attn_bias, dropout_p, scale):
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if attn_bias is not None:
        scores = scores + attn_bias
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)


def _sdpa(q, k, v, attn_bias, dropout_p, scale, causal_only):
    if attn_bias is not None and attn_bias.dim() < 4:
        attn_bias = attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, is_causal=causal_only, scale=scale
    )


def _xformers_signature(q, k, attn_bias, dropout_p) -> tuple:
    return (
        q.device.type,
        q.dtype,
        q.shape[-1],
        attn_bias is not None,
        attn_bias is not None and attn_bias.requires_grad,
        dropout_p > 0,
        q.requires_grad or k.requires_grad,
    )


def _xformers(q, k, v, attn_bias, dropout_p, scale, warn=True):
    """Run xformers' memory-efficient kernel; return None if it cannot run these inputs."""
    xops = _xformers_ops()
    if xops is None:
        return None
    sig = _xformers_signature(q, k, attn_bias, dropout_p)
    if sig in _XFORMERS_UNSUPPORTED:
        return None
    b, h, tq, _ = q.shape
    tk = k.shape[2]
    bias = None
    if attn_bias is not None:
        # xformers wants a [B, H, Tq, Tk] bias whose rows start 8-element aligned: pad the
        # storage and slice it back (differentiable, so a learned bias still gets its gradient).
        pad_tk = math.ceil(tk / 8) * 8
        bias = F.pad(attn_bias.expand(b, h, tq, tk), (0, pad_tk - tk))[..., :tk]
    try:
        out = xops.memory_efficient_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_bias=bias,
            p=dropout_p,
            scale=scale,
        )
    except (NotImplementedError, RuntimeError, ValueError) as err:
        _XFORMERS_UNSUPPORTED[sig] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if not warn:
            return None
        _warn_once(
            f"xformers:{sig}",
            "xformers memory_efficient_attention cannot run these inputs "
            f"(device={q.device.type}, dtype={q.dtype}, head_dim={q.shape[-1]}, "
            f"bias={attn_bias is not None}): {_XFORMERS_UNSUPPORTED[sig]}; falling back to SDPA.",
        )
        return None
    return out.transpose(1, 2)


def resolve_backend(backend: str | None, q: torch.Tensor) -> str:
    """Map ``None``/``auto`` to the backend that will be tried first for ``q``'s device."""
    name = _validate_backend(backend or get_default_backend())
    if name == "auto":
        return "xformers" if q.is_cuda and xformers_available() else "sdpa"
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    causal: bool = False,
    scale: float | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with padding mask, additive bias and a selectable backend.

    Args:
        q: queries ``[B, H, Tq, Dh]``.
        k: keys ``[B, H, Tk, Dh]`` (``Tk`` may differ from ``Tq``: cross-attention).
        v: values ``[B, H, Tk, Dv]``.
        key_mask: ``[B, Tk]`` bool, ``True`` where a key may be attended to.
        bias: additive scores broadcastable to ``[B, H, Tq, Tk]`` (may require grad).
        dropout_p: dropout on the attention probabilities (pass 0.0 in eval mode).
        causal: hide keys after the query position (``j > i``).
        scale: score scale, default ``Dh ** -0.5``.
        backend: ``eager | sdpa | xformers | auto``; ``None`` uses :func:`get_default_backend`.

    Returns:
        ``[B, H, Tq, Dv]``.
    """
    _check_inputs(q, k, v, key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    name = resolve_backend(backend, q)
    # A pure causal mask goes to SDPA as ``is_causal`` (lets it pick the flash kernel).
    sdpa_causal = causal and key_mask is None and bias is None and name == "sdpa"
    attn_bias = None if sdpa_causal else _combined_bias(q, k, key_mask, bias, causal)

    if name == "eager":
        out = _eager(q, k, v, attn_bias, dropout_p, scale)
    else:
        out = _xformers(q, k, v, attn_bias, dropout_p, scale) if name == "xformers" else None
        if out is None and _sdpa_would_use_math(q, k, v, attn_bias, dropout_p):
            if sdpa_causal:
                attn_bias = _combined_bias(q, k, None, None, True)
            out = lean_attention(q, k, v, attn_bias, scale, dropout_p)
        elif out is None:
            out = _sdpa(q, k, v, attn_bias, dropout_p, scale, sdpa_causal)
    return _zero_empty_rows(out, key_mask)


def _sdpa_would_use_math(q, k, v, attn_bias, dropout_p) -> bool:
    """CPU training with attention dropout or a bias that needs a gradient: SDPA has no fused
    kernel for these and would run its memory-hungry math kernel; :func:`lean_attention` is the
    same function with a lean backward (see :mod:`xfm.core.lean_attention`)."""
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    bias_grad = attn_bias is not None and attn_bias.requires_grad
    if not (dropout_p > 0.0 or bias_grad):
        return False
    return bias_grad or q.requires_grad or k.requires_grad or v.requires_grad


def runnable_backends(device: torch.device | str = "cpu") -> list[str]:
    """The concrete backends whose kernels actually run on ``device`` (probed with tiny inputs)."""
    device = torch.device(device)
    names = ["eager", "sdpa"]
    if xformers_available():
        q = torch.zeros(1, 1, 8, 16, device=device)
        if _xformers(q, q, q, None, 0.0, 0.25, warn=False) is not None:
            names.append("xformers")
    return names


__all__ = [
    "BACKENDS",
    "Backend",
    "attention",
    "get_default_backend",
    "resolve_backend",
    "runnable_backends",
    "set_default_backend",
    "use_backend",
    "xformers_available",
]
