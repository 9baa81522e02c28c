"""The shared blocks equal hand-written reference computations from their own parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xfm.core.attention import runnable_backends, use_backend
from xfm.core.layers import DropPath, MultiHeadAttention, PostLNLayer, PreLNBlock

BACKENDS = runnable_backends("cpu")


def _mha_ref(m: MultiHeadAttention, x, ctx, key_mask):
    """Textbook multi-head attention with -inf masking, in float64."""
    b, tq, d = x.shape
    h, dh = m.num_heads, m.head_dim

    def lin(layer, t):
        return F.linear(t.double(), layer.weight.double(), layer.bias.double())

    q = lin(m.query, x).view(b, tq, h, dh).transpose(1, 2)
    k = lin(m.key, ctx).view(b, -1, h, dh).transpose(1, 2)
    v = lin(m.value, ctx).view(b, -1, h, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / dh**0.5
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, tq, d)
    return lin(m.out, o)


def _ln(norm, t):
    return F.layer_norm(
        t, norm.normalized_shape, norm.weight.double(), norm.bias.double(), norm.eps
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_ln_layer_with_cross_attention_matches_reference(backend):
    torch.manual_seed(0)
    layer = PostLNLayer(16, 4, 40, cross_attention=True, cross_dim=24, eps=1e-5).eval()
    x, ctx = torch.randn(3, 6, 16), torch.randn(3, 9, 24)
    mask = torch.arange(6)[None] < torch.tensor([6, 4, 2])[:, None]
    cmask = torch.arange(9)[None] < torch.tensor([9, 9, 5])[:, None]
    with use_backend(backend):
        out = layer(x, key_mask=mask, context=ctx, context_mask=cmask)
    h = _ln(layer.self_norm, x.double() + _mha_ref(layer.self_attn, x, x, mask))
    h = _ln(layer.cross_norm, h + _mha_ref(layer.cross_attn, h.float(), ctx, cmask))
    f = layer.ffn
    ff = F.linear(
        F.gelu(F.linear(h, f.fc1.weight.double(), f.fc1.bias.double())),
        f.fc2.weight.double(),
        f.fc2.bias.double(),
    )
    ref = _ln(layer.ffn_norm, h + ff)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_reuses_precomputed_kv():
    torch.manual_seed(0)
    layer = PostLNLayer(16, 4, 40, cross_attention=True, cross_dim=24).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    kv = layer.cross_attn.project_kv(ctx)
    torch.testing.assert_close(layer(x, context=ctx), layer(x, context_kv=kv), atol=0, rtol=0)
    with pytest.raises(ValueError, match="context width must be 24; got 16"):
        layer(x, context=x)
    with pytest.raises(ValueError, match="pass `context`"):
        layer(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qkv_bias", ["qv", "qkv", "none"])
def test_pre_ln_block_matches_reference(backend, qkv_bias):
    torch.manual_seed(0)
    blk = PreLNBlock(16, 4, mlp_ratio=2.0, qkv_bias=qkv_bias, layer_scale_init=0.1).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 5, 16)
    rel = torch.randn(4, 5, 5, requires_grad=True)
    with use_backend(backend):
        out = blk(x, attn_bias=rel)
    a = blk.attn
    xd = x.double()
    n1 = _ln(blk.norm1, xd)
    if qkv_bias == "qv":
        bias = torch.cat([a.q_bias, torch.zeros(16), a.v_bias]).double()
    elif qkv_bias == "qkv":
        bias = a.qkv.bias.double()
    else:
        bias = None
    qkv = F.linear(n1, a.qkv.weight.double(), bias).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * 4**-0.5, qkv[1], qkv[2]
    att = ((q @ k.transpose(-1, -2)) + rel.double()).softmax(-1) @ v
    att = F.linear(
        att.transpose(1, 2).reshape(2, 5, 16), a.proj.weight.double(), a.proj.bias.double()
    )
    h = xd + blk.gamma_1.double() * att
    m = blk.mlp
    n2 = _ln(blk.norm2, h)
    mlp = F.linear(
        F.gelu(F.linear(n2, m.fc1.weight.double(), m.fc1.bias.double())),
        m.fc2.weight.double(),
        m.fc2.bias.double(),
    )
    ref = h + blk.gamma_2.double() * mlp
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert rel.grad is not None and rel.grad.abs().sum() > 0


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    dp = DropPath(0.25)
    x = torch.ones(20000, 3)
    torch.manual_seed(0)
    y = dp.train()(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.02
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\)"):
        DropPath(1.0)


def test_width_not_divisible_by_heads_is_explained():
    with pytest.raises(ValueError, match="width 10 is not divisible by the number of heads 4"):
        MultiHeadAttention(10, 4)


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_training_path_equals_plain_composition_and_keeps_less(bias):
    """The GELU MLP's one-node training path: same output and gradients as
    ``fc2(gelu(fc1(x)))`` computed by autograd in float64, and one ``[..., 4D]`` tensor less kept
    for backward."""
    from xfm.core.layers.mlp import Mlp

    torch.manual_seed(0)
    mlp = Mlp(8, 32, bias=bias).train()
    x = torch.randn(3, 5, 8, requires_grad=True)
    params = [x, *mlp.parameters()]

    def plain():
        w1, w2 = mlp.fc1.weight.double(), mlp.fc2.weight.double()
        b1 = mlp.fc1.bias.double() if bias else None
        b2 = mlp.fc2.bias.double() if bias else None
        return F.linear(F.gelu(F.linear(x.double(), w1, b1)), w2, b2)

    kept: list[int] = []

    def pack(t):
        kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mlp(x)
    ref = plain()
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    upstream = torch.randn(out.shape)
    grads = torch.autograd.grad(out, params, upstream)
    ref_grads = torch.autograd.grad(ref, params, upstream.double())
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert kept.count(3 * 5 * 32) == 1  # fc1's output only (not also gelu's output)
    with torch.no_grad():  # eval / no-grad take the plain path: same numbers
        torch.testing.assert_close(mlp(x), out.detach())


@pytest.mark.parametrize("gamma", [True, False])
@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_residual_add_equals_written_out_update(gamma, drop):
    """``residual_add`` = ``x + drop_path(gamma * branch)`` written out in float64 with the
    same per-sample mask (same seed), in value and in every gradient."""
    from xfm.core.layers.drop_path import drop_path
    from xfm.core.layers.residual import residual_add

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 8, generator=g, requires_grad=True)
    branch = torch.randn(6, 5, 8, generator=g, requires_grad=True)
    scale = (torch.rand(8, generator=g) + 0.5).requires_grad_(gamma)
    gam = scale if gamma else None
    torch.manual_seed(3)
    out = residual_add(x, branch, gam, drop, training=True)
    torch.manual_seed(3)
    b64 = branch.double() if gam is None else gam.double() * branch.double()
    ref = x.double() + drop_path(b64, drop, training=True)
    if drop:
        dropped = (ref - x.double()).abs().sum((1, 2)) == 0
        assert 0 < int(dropped.sum()) < 6  # the mask really drops some samples, not all
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    inputs = [x, branch] + ([scale] if gamma else [])
    upstream = torch.randn(out.shape, generator=g)
    for got, want in zip(
        torch.autograd.grad(out, inputs, upstream),
        torch.autograd.grad(ref, inputs, upstream.double()),
        strict=True,
    ):
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-5)


def test_residual_add_keeps_a_bf16_branch_and_returns_its_gradient_in_bf16():
    """Under bf16 autocast the branch stays bf16 (kept for backward as such), the result is
    the fp32 residual stream, and the branch gradient comes back as bf16."""
    from xfm.core.layers.residual import residual_add

    x = torch.randn(2, 3, 4, requires_grad=True)
    branch = torch.randn(2, 3, 4).bfloat16().requires_grad_()
    gamma = torch.full((4,), 0.1, requires_grad=True)
    out = residual_add(x, branch, gamma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x + gamma * branch.float())
    out.sum().backward()
    assert branch.grad.dtype == torch.bfloat16
    torch.testing.assert_close(branch.grad.float(), torch.full((2, 3, 4), 0.1), atol=1e-3, rtol=0)
    torch.testing.assert_close(gamma.grad, branch.float().sum((0, 1)).detach())


def test_attention_casts_its_input_once_under_autocast():
    """Under bf16 autocast, self-attention casts ``x`` once for its three projections (autocast
    alone casts it per projection): same output as without the explicit cast."""
    from torch.profiler import profile

    from xfm.core.layers import mha

    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)

    def casts_of_x(fn) -> int:
        with profile(record_shapes=True) as prof, torch.autocast("cpu", torch.bfloat16):
            out = fn()
        events = prof.key_averages(group_by_input_shape=True)
        return out, sum(
            e.count for e in events if e.key == "aten::_to_copy" and e.input_shapes[0] == [2, 5, 16]
        )

    out, once = casts_of_x(lambda: m(x))
    original = mha.autocast_input
    mha.autocast_input = lambda t: t
    try:
        ref, per_projection = casts_of_x(lambda: m(x))
    finally:
        mha.autocast_input = original
    assert (once, per_projection) == (1, 3)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize(("dim", "heads", "cross"), [(32, 4, True), (24, 3, False), (40, 5, True)])
def test_post_ln_layer_positions_equal_the_full_output_there(dim, heads, cross):
    """``positions=`` computes only the wanted rows: same outputs and input gradients."""
    torch.manual_seed(dim)
    layer = PostLNLayer(
        dim, heads, 2 * dim, cross_attention=cross, cross_dim=16, dropout=0.0, attn_dropout=0.0
    )
    x = torch.randn(3, 7, dim, requires_grad=True)
    ctx = torch.randn(3, 5, 16, requires_grad=True) if cross else None
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    positions = torch.tensor([[0, 3], [2, 0], [6, 6]])
    full = layer(x, key_mask=mask, context=ctx)
    want = torch.gather(full, 1, positions[..., None].expand(-1, -1, dim))
    got = layer(x, key_mask=mask, context=ctx, positions=positions)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    inputs = [x] + ([ctx] if cross else [])
    g_want = torch.autograd.grad(want.square().sum(), inputs + list(layer.parameters()))
    g_got = torch.autograd.grad(got.square().sum(), inputs + list(layer.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        layer(x, causal=True, context=ctx, positions=positions)
