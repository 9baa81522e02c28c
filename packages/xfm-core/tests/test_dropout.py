"""``xfm.core.dropout``: masks from random words (rates, independence, seeding) and the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xfm.core.dropout import Dropout, dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03, 0.9])
def test_mask_rate_is_p_within_five_standard_errors(p: float) -> None:
    torch.manual_seed(0)
    n = 400_001  # odd: the last word is half used
    rate = dropout_mask((n,), p, torch.device("cpu")).double().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_mask_elements_are_independent_and_both_halves_of_a_word_are_used() -> None:
    torch.manual_seed(1)
    m = dropout_mask((200_000, 2), 0.5, torch.device("cpu")).double()
    even, odd = m[:, 0], m[:, 1]  # the two halves of each random word
    assert abs(even.mean() - 0.5) < 0.01 and abs(odd.mean() - 0.5) < 0.01
    corr = ((even - even.mean()) * (odd - odd.mean())).mean() / (even.std() * odd.std())
    assert abs(corr) < 0.01
    neighbours = m.flatten()
    corr = torch.corrcoef(torch.stack([neighbours[1:-1:2], neighbours[2::2]]))[0, 1]
    assert abs(corr) < 0.01  # across word boundaries too


def test_masks_follow_the_default_generator_seed() -> None:
    torch.manual_seed(3)
    a = dropout_mask((7, 9), 0.3, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(a, dropout_mask((7, 9), 0.3, torch.device("cpu")))
    assert not torch.equal(a, dropout_mask((7, 9), 0.3, torch.device("cpu")))


def test_dropout_output_and_gradient_are_the_mask_times_the_scale() -> None:
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(4)
    y = dropout(x, 0.25)
    torch.manual_seed(4)
    keep = ~dropout_mask(x.shape, 0.25, x.device)
    torch.testing.assert_close(y, x * keep / 0.75, rtol=1e-6, atol=0)
    (g,) = torch.autograd.grad(y, x, torch.arange(x.numel(), dtype=torch.float32).view_as(x))
    torch.testing.assert_close(g, torch.arange(x.numel()).view_as(x) * keep / 0.75)


def test_module_is_a_drop_in_nn_dropout() -> None:
    layer = Dropout(0.2)
    assert isinstance(layer, nn.Dropout) and layer.p == 0.2 and not layer.state_dict()
    x = torch.randn(5, 8)
    assert layer.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    y = layer.train()(x)
    assert ((y == 0) | torch.isclose(y, x / 0.8)).all()
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.5)


def test_bf16_input_keeps_its_dtype() -> None:
    x = torch.randn(4, 6, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.5)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16
