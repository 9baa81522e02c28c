"""``vocab_cross_entropy`` (fused projection + cross-entropy) against the unfused form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xfm.core.layers import MLMHead, vocab_cross_entropy


def _inputs(k: int, d: int, v: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(k, d, generator=gen).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=gen) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, v, (k,), generator=gen)
    return hidden, weight, b, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize(
    ("k", "d", "v", "bias"), [(7, 16, 50, True), (1, 8, 3, False), (33, 24, 1000, True)]
)
def test_equals_linear_then_cross_entropy_in_fp32(k, d, v, bias) -> None:
    hidden, weight, b, labels = _inputs(k, d, v, bias, seed=k)
    want = F.cross_entropy(F.linear(hidden, weight, b), labels)
    got = vocab_cross_entropy(hidden, weight, b, labels)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(_grads(got, (hidden, weight, b)), _grads(want, (hidden, weight, b))):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_under_bf16_autocast_equals_the_unfused_autocast_form() -> None:
    hidden, weight, b, labels = _inputs(20, 32, 300, True, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy((F.linear(hidden, weight) + b).float(), labels)
        got = vocab_cross_entropy(hidden, weight, b, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
    g_got, g_want = _grads(got, (hidden, weight, b)), _grads(want, (hidden, weight, b))
    for g, w, t in zip(g_got, g_want, (hidden, weight, b)):
        assert g.dtype == t.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0.05, atol=2e-3)


def test_no_rows_is_a_connected_zero_and_backward_runs_once() -> None:
    hidden, weight, b, labels = _inputs(0, 8, 10, True)
    loss = vocab_cross_entropy(hidden, weight, b, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0 and weight.grad is not None and not weight.grad.any()
    hidden, weight, b, labels = _inputs(4, 8, 10, True)
    loss = vocab_cross_entropy(hidden, weight, b, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        loss.backward()
    with pytest.raises(ValueError, match=r"hidden \[K, D\]"):
        vocab_cross_entropy(hidden[None], weight, b, labels)


def test_mlm_head_loss_equals_cross_entropy_of_its_logits() -> None:
    torch.manual_seed(0)
    head = MLMHead(24, 77)
    torch.nn.init.normal_(head.bias, std=0.3)
    rows, labels = torch.randn(9, 24), torch.randint(0, 77, (9,))
    want = F.cross_entropy(head(rows), labels)
    got = head.loss(rows, labels)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g_want = torch.autograd.grad(want, list(head.parameters()))
    g_got = torch.autograd.grad(got, list(head.parameters()))
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
