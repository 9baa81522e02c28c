"""Every attention backend equals the eager reference, forward and backward (incl. bias grad)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from xfm.core import attention as attn_mod
from xfm.core.attention import attention, runnable_backends, use_backend

CPU_BACKENDS = [b for b in runnable_backends("cpu") if b != "eager"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _naive(q, k, v, key_mask=None, bias=None, causal=False, keep=None, p=0.0):
    """Independent reference in float64 with -inf masking; fully hidden rows are defined as 0.
    ``keep``: a dropout keep-mask on the probabilities (scaled by ``1 / (1 - p)``)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    hide = torch.zeros(scores.shape, dtype=torch.bool)
    if key_mask is not None:
        hide |= ~key_mask[:, None, None, :]
    if causal:
        hide |= torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    scores = scores.masked_fill(hide, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    if keep is not None:
        probs = probs * keep / (1.0 - p)
    return probs @ v


def _inputs(b=3, h=2, tq=7, tk=7, d=8, seed=0, padded=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g, requires_grad=True)
    k = torch.randn(b, h, tk, d, generator=g, requires_grad=True)
    v = torch.randn(b, h, tk, d, generator=g, requires_grad=True)
    mask = None
    if padded:
        lengths = torch.tensor([tk, max(tk - 3, 1), 2][:b])
        mask = torch.arange(tk)[None, :] < lengths[:, None]
    rel = torch.randn(h, tq, tk, generator=g, requires_grad=True) if bias else None
    return q, k, v, mask, rel


def _grads(out, tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, [t for t in tensors if t is not None], upstream)


@pytest.mark.parametrize("case", ["self", "cross", "nobias", "causal", "causal_pad"])
def test_eager_matches_float64_reference(case):
    cross = case == "cross"
    q, k, v, mask, bias = _inputs(tk=11 if cross else 7, bias=case not in ("nobias", "causal"))
    causal = case.startswith("causal")
    if case == "causal":
        mask = None
    out = attention(q, k, v, key_mask=mask, bias=bias, causal=causal, backend="eager")
    ref = _naive(q, k, v, mask, bias, causal)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "case", ["self", "cross", "nobias", "causal", "causal_pad", "fully_padded", "bias_batch"]
)
def test_backend_matches_eager_forward_and_grads(backend, case):
    cross = case == "cross"
    q, k, v, mask, bias = _inputs(tk=11 if cross else 7, bias=case not in ("nobias", "causal"))
    causal = case.startswith("causal")
    if case == "causal":
        mask = None
    if case == "fully_padded":
        mask = mask.clone()
        mask[1] = False  # a sample with no valid key at all
    if case == "bias_batch":  # a per-sample bias [B, H, Tq, Tk]
        bias = torch.randn(3, 2, 7, 7, requires_grad=True)
    tensors = [q, k, v, bias]
    ref = attention(q, k, v, key_mask=mask, bias=bias, causal=causal, backend="eager")
    out = attention(q, k, v, key_mask=mask, bias=bias, causal=causal, backend=backend)
    torch.testing.assert_close(out, ref, **TOL)
    assert torch.isfinite(out).all()
    grads = _grads(out, tensors)
    for g_out, g_ref in zip(grads, _grads(ref, tensors)):
        assert torch.isfinite(g_out).all()
        torch.testing.assert_close(g_out, g_ref, **TOL)
    if case == "fully_padded":
        assert out[1].abs().max() == 0
        assert grads[0][1].abs().max() == 0  # no gradient reaches the empty sample's queries


def test_fully_padded_row_gives_zero_not_nan_eager():
    q, k, v, mask, bias = _inputs()
    mask = torch.zeros_like(mask)
    out = attention(q, k, v, key_mask=mask, bias=bias, backend="eager")
    assert torch.equal(out, torch.zeros_like(out))


def test_bf16_backends_close():
    q, k, v, mask, bias = _inputs()
    qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
    for backend in CPU_BACKENDS:
        out = attention(qb, kb, vb, key_mask=mask, bias=bias.detach(), backend=backend)
        ref = _naive(q.detach(), k.detach(), v.detach(), mask, bias.detach())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


def test_dropout_only_in_probabilities():
    q, k, v, _, _ = _inputs(padded=False, bias=False)
    torch.manual_seed(0)
    out = attention(q, k, v, dropout_p=0.5, backend="eager")
    ref = attention(q, k, v, backend="eager")
    assert not torch.allclose(out, ref)
    assert attention(q, k, v, dropout_p=0.0, backend="sdpa").shape == ref.shape


def test_default_backend_context_and_validation():
    q, k, v, _, _ = _inputs()
    with use_backend("eager"):
        assert attn_mod.get_default_backend() == "eager"
    assert attn_mod.get_default_backend() == "auto"
    assert attn_mod.resolve_backend("auto", q) == "sdpa"  # CPU: never xformers
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention(q, k, v, backend="flash")


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 3, 4), (2, 1, 3, 4), (2, 1, 3, 4)), r"\[B, H, T, Dh\]"),
        (((2, 1, 3, 4), (2, 1, 3, 8), (2, 1, 3, 8)), "shapes disagree"),
    ],
)
def test_bad_shapes_are_explained(shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v)


def test_bad_mask_shape_is_explained():
    q = torch.zeros(2, 1, 3, 4)
    with pytest.raises(ValueError, match=r"key_mask must be \[B, Tk\] = \[2, 3\]"):
        attention(q, q, q, key_mask=torch.ones(2, 4, dtype=torch.bool))


def test_xformers_without_kernels_falls_back_to_sdpa_once(monkeypatch):
    """Where xformers imports but has no kernel for the inputs, results equal SDPA, one warning."""
    xops = attn_mod._xformers_ops()
    if xops is None:
        pytest.skip("xformers is not installed")
    attn_mod._XFORMERS_UNSUPPORTED.clear()
    attn_mod._WARNED.clear()
    q, k, v, mask, bias = _inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = attention(q, k, v, key_mask=mask, bias=bias, backend="xformers")
        out2 = attention(q, k, v, key_mask=mask, bias=bias, backend="xformers")
    ref = attention(q, k, v, key_mask=mask, bias=bias, backend="sdpa")
    if "xformers" in runnable_backends("cpu"):
        pytest.skip("xformers kernels run on this CPU: fallback path not reachable")
    torch.testing.assert_close(out1, ref, **TOL)
    torch.testing.assert_close(out2, ref, **TOL)
    fallback = [w for w in caught if "falling back to SDPA" in str(w.message)]
    assert len(fallback) == 1


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (xformers has no CPU kernels)"
)
@pytest.mark.parametrize("backend", ["sdpa", "xformers", "auto"])
@pytest.mark.parametrize("case", ["self", "cross", "fully_padded"])
def test_cuda_backends_match_eager(backend, case):
    q, k, v, mask, bias = _inputs(tk=11 if case == "cross" else 7, d=64)
    if case == "fully_padded":
        mask[1] = False
    q, k, v, bias = (t.detach().cuda().requires_grad_() for t in (q, k, v, bias))
    mask = mask.cuda()
    tensors = [q, k, v, bias]
    ref = attention(q, k, v, key_mask=mask, bias=bias, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention(q, k, v, key_mask=mask, bias=bias, backend=backend)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g_out, g_ref in zip(_grads(out, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["self_bias", "cross_pad", "causal", "fully_padded"])
def test_training_dropout_path_matches_float64_reference(case):
    """CPU training with attention dropout (the lean path): forward and every gradient equal a
    float64 reference that uses the same keep-mask."""
    from xfm.core.lean_attention import dropout_mask

    q, k, v, mask, bias = _inputs(tk=11 if case == "cross_pad" else 7)
    causal = case == "causal"
    if case == "causal":
        mask, bias = None, None
    if case == "cross_pad":
        bias = None
    if case == "fully_padded":
        mask = mask.clone()
        mask[1] = False
    p = 0.3
    torch.manual_seed(7)
    out = attention(q, k, v, key_mask=mask, bias=bias, causal=causal, dropout_p=p, backend="sdpa")
    torch.manual_seed(7)
    keep = ~dropout_mask(torch.Size((*q.shape[:3], k.shape[2])), p, q.device)
    assert 0.5 < keep.float().mean() < 0.9
    ref = _naive(q, k, v, mask, bias, causal, keep, p)
    if mask is not None:
        ref = ref * mask.any(-1).double()[:, None, None, None]
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    tensors = [t for t in (q, k, v, bias) if t is not None]
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, tensors, upstream)
    ref_grads = torch.autograd.grad(ref, tensors, upstream.double())
    for g_out, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-5)


def test_lean_path_keeps_less_for_backward_than_sdpa_math():
    """The bytes autograd keeps for one cross-attention call with dropout (BERT fusion layer
    shapes): the lean path keeps no copies of the reused keys/values."""
    from xfm.core.lean_attention import lean_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, 30, 64, generator=g, requires_grad=True)
    k = torch.randn(4, 6, 197, 64, generator=g, requires_grad=True)
    v = torch.randn(4, 6, 197, 64, generator=g, requires_grad=True)

    def kept(fn) -> int:
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
        return sum(n for ptr, n in storages.items() if ptr not in inputs)

    lean = kept(lambda: lean_attention(q, k, v, None, 0.125, 0.1))
    math_kernel = kept(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    )
    probs = 4 * 6 * 30 * 197
    # lean: probabilities (fp32) + dropout mask (bool); contiguous q, k, v are kept as given
    assert lean == probs * 4 + probs
    assert math_kernel > 2 * lean


@pytest.mark.parametrize(
    ("bias_grad", "dropout_p", "kernel"),
    [
        (False, 0.0, "ScaledDotProductFlashAttentionForCpuBackward0"),  # SDPA's fused kernel
        (True, 0.0, "_LeanAttentionBackward"),  # learned bias: the one lean path
        (False, 0.1, "_LeanAttentionBackward"),  # attention dropout
    ],
)
def test_cpu_training_kernel_choice(bias_grad, dropout_p, kernel):
    """CPU training: SDPA's fused kernel wherever no bias needs a gradient and there is no
    dropout; the lean path (the single biased-attention path, BEiT's included) otherwise."""
    q, k, v, _, bias = _inputs(padded=False)
    bias = bias.detach().requires_grad_(bias_grad)
    for backend in ("sdpa", "auto"):
        out = attention(q, k, v, bias=bias, dropout_p=dropout_p, backend=backend)
        assert out.grad_fn.name() == kernel


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_lean_attention_reads_strided_heads_and_a_shared_bias(dropout_p):
    """q/k/v as the fused-qkv layout gives them (strided views of one ``[B, T, 3, H, Dh]``
    tensor) with a learned ``[H, T, T]`` bias: forward and every gradient equal float64
    autograd, and the ``[B, H, T, T]`` scores are never copied or cast."""
    from torch.profiler import profile

    from xfm.core.lean_attention import dropout_mask, lean_attention

    g = torch.Generator().manual_seed(0)
    b, t, h, dh = 3, 7, 2, 4
    qkv = torch.randn(b, t, 3, h, dh, generator=g, requires_grad=True)
    bias = torch.randn(h, t, t, generator=g, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    torch.manual_seed(5)
    with profile(record_shapes=True) as prof:
        out = lean_attention(q, k, v, bias, 0.3, dropout_p)
    scores = [b, h, t, t]
    events = prof.key_averages(group_by_input_shape=True)
    casts = [e for e in events if e.key == "aten::_to_copy" and e.input_shapes[0][-1:] == [t]]
    copies = [e.count for e in events if e.key == "aten::copy_" and e.input_shapes[0] == scores]
    assert not casts
    assert copies == [1]  # the bias written into the score buffer, once
    torch.manual_seed(5)
    keep = ~dropout_mask(torch.Size(scores), dropout_p, q.device) if dropout_p else None
    qd, kd, vd = (x.double() for x in (q, k, v))
    probs = ((qd @ kd.transpose(-1, -2)) * 0.3 + bias.double()).softmax(-1)
    if keep is not None:
        probs = probs * keep / (1 - dropout_p)
    ref = probs @ vd
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    upstream = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, [qkv, bias], upstream)
    ref_grads = torch.autograd.grad(ref, [qkv, bias], upstream.double())
    for got, want in zip(grads, ref_grads, strict=True):  # (both fp32: the leaves' dtype)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
