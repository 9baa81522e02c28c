"""The BEiT block's biased attention runs through xfm.core.attention (one path, no vision copy)
and equals an independent float64 reference, values and gradients (the learned bias's too)."""

from __future__ import annotations

import pytest
import torch

from xfm.core.layers import FusedQKVAttention, PreLNBlock
from xfm.vision.tower import VisionBlock

GRID = (2, 3)
N = GRID[0] * GRID[1] + 1  # patches + CLS


def _block(backend: str, seed: int = 0) -> VisionBlock:
    torch.manual_seed(seed)
    block = VisionBlock(24, 3, qkv_bias="qv", rel_pos_grid=GRID, backend=backend)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block.train()


def _reference(block: VisionBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's self-attention written out in float64 from its parameters."""
    attn = block.attn
    b, n, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.double()
    qkv_b = torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias)).double()
    qkv = x.double() @ w.t() + qkv_b
    q, k, v = qkv.view(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * dh**-0.5 + block.rel_pos().double()
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).reshape(b, n, d) @ attn.proj.weight.double().t() + (
        attn.proj.bias.double()
    )


def test_vision_block_uses_the_core_attention_module():
    block = _block("sdpa")
    assert type(block.attn) is FusedQKVAttention
    # same submodules and parameter names as the plain pre-LN block (checkpoints unchanged)
    plain = PreLNBlock(24, 3, qkv_bias="qv")
    own = {k for k in block.state_dict() if not k.startswith("rel_pos.")}
    assert own == set(plain.state_dict())


@pytest.mark.parametrize("backend", ["eager", "sdpa", "auto"])
def test_learned_bias_attention_matches_float64_reference(backend):
    block = _block(backend)
    x = torch.randn(2, N, 24, generator=torch.Generator().manual_seed(1))
    out = block.attn(x, bias=block.rel_pos())
    ref = _reference(block, x)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    params = [block.attn.qkv.weight, block.attn.q_bias, block.attn.v_bias, block.rel_pos.table]
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(out, params, upstream)
    ref_grads = torch.autograd.grad(ref, params, upstream.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-5)


def test_learned_bias_attention_bf16_autocast_close_to_reference():
    block = _block("sdpa")
    x = torch.randn(2, N, 24, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block.attn(x, bias=block.rel_pos())
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert block.rel_pos.table.grad is not None and block.rel_pos.table.grad.abs().sum() > 0
    ref = _reference(block, x)
    torch.testing.assert_close(out.double(), ref, atol=0.1, rtol=0.05)
