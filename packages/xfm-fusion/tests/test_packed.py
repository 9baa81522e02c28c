"""The unpadded re-ranking path (:mod:`xfm.fusion.packed`) against the padded fusion forward."""

from __future__ import annotations

import pytest
import torch

from xfm.fusion import XFM, CrossAttentionFusionEncoder
from xfm.fusion.packed import pair_vectors


def _tiny_xfm(fusion: dict) -> XFM:
    """A tiny X-FM (ViT, BERT, width 24) with the given fusion encoder spec."""
    return XFM(
        vision={
            "name": "vit",
            "image_size": 32,
            "patch_size": 16,
            "width": 24,
            "layers": 1,
            "heads": 2,
        },
        text={
            "name": "bert",
            "vocab_size": 50,
            "width": 24,
            "layers": 1,
            "heads": 2,
            "ffn_dim": 48,
        },
        fusion=fusion,
    )


def _padded_reference(enc, states, mask, kv):
    n = states.shape[0]
    wide = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv]
    return enc(states, mask, image_kv=wide)[:, 0]


@pytest.mark.parametrize(
    ("width", "layers", "heads", "vision_width", "tokens"),
    [(48, 2, 4, 36, 9), (64, 3, 2, 64, 17), (40, 1, 5, 24, 1), (24, 4, 3, 56, 5)],
)
def test_pair_vectors_equal_the_padded_forward(width, layers, heads, vision_width, tokens) -> None:
    gen = torch.Generator().manual_seed(width + layers)
    torch.manual_seed(width)
    enc = CrossAttentionFusionEncoder(
        width=width, layers=layers, heads=heads, ffn_dim=3 * width, vision_width=vision_width
    ).eval()
    n, t = 7, 12
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    lengths[0] = t  # one full row, one single-token row
    lengths[1] = 1
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    states = torch.randn(n, t, width, generator=gen)
    states[mask == 0] = 1e4  # padding rows must not leak into any output
    image = torch.randn(1, tokens, vision_width, generator=gen)
    with torch.no_grad():
        kv = enc.image_kv(image)
        want = _padded_reference(enc, states, mask, kv)
        got = enc.pair_vectors(states, mask, kv)
        shared = enc.text_self_attention(states, mask)  # once per text, for every image
        from_shared = enc.pair_vectors(shared, mask, kv, text_done=True)
    assert got.shape == from_shared.shape == (n, width)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    torch.testing.assert_close(from_shared, want, rtol=0, atol=2e-6)


def test_pair_vectors_with_a_mask_that_is_not_a_prefix_and_trailing_padding() -> None:
    torch.manual_seed(0)
    enc = CrossAttentionFusionEncoder(
        width=32, layers=2, heads=4, ffn_dim=64, vision_width=32
    ).eval()
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    states = torch.randn(3, 6, 32)
    with torch.no_grad():
        kv = enc.image_kv(torch.randn(1, 5, 32))
        torch.testing.assert_close(
            enc.pair_vectors(states, mask, kv),
            _padded_reference(enc, states, mask, kv),
            rtol=0,
            atol=2e-6,
        )


def test_pair_vectors_under_bf16_autocast_stay_close() -> None:
    torch.manual_seed(1)
    enc = CrossAttentionFusionEncoder(
        width=64, layers=2, heads=4, ffn_dim=128, vision_width=64
    ).eval()
    mask = (torch.arange(10)[None] < torch.tensor([[10], [4], [7]])).long()
    states, image = torch.randn(3, 10, 64), torch.randn(1, 8, 64)
    with torch.no_grad():
        want = _padded_reference(enc, states, mask, enc.image_kv(image))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = enc.pair_vectors(states, mask, enc.image_kv(image))
    assert got.dtype == torch.float32  # the post-LN residual stream stays fp32
    assert 0 < (got - want).abs().max() < 0.1


def test_model_pair_vectors_fall_back_to_fuse_in_training_mode() -> None:
    torch.manual_seed(2)
    fusion = {"name": "cross_attention", "layers": 2, "heads": 2, "ffn_dim": 48}
    model = _tiny_xfm({**fusion, "dropout": 0.0, "attn_dropout": 0.0}).eval()
    states = torch.randn(4, 6, 24)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[2, 3:] = 0
    with torch.no_grad():
        kv = model.fusion_image_kv(torch.randn(1, 5, 24))
        fast = model.pair_vectors(states, mask, kv)  # eval: the unpadded path
        model.fusion_encoder.train()  # training: fuse() with the K/V broadcast
        slow = model.pair_vectors(states, mask, kv)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-6)


def test_pair_vectors_refuse_training_mode_several_images_and_a_masked_position_0() -> None:
    enc = CrossAttentionFusionEncoder(width=16, layers=1, heads=2, ffn_dim=32, vision_width=16)
    states, mask = torch.randn(2, 4, 16), torch.ones(2, 4)
    kv = enc.image_kv(torch.randn(1, 3, 16))
    with pytest.raises(RuntimeError, match="eval"):
        pair_vectors(enc, states, mask, kv)
    with pytest.raises(RuntimeError, match="eval"):
        enc.text_self_attention(states, mask)
    enc.eval()
    with pytest.raises(ValueError, match="one image"):
        enc.pair_vectors(states, mask, enc.image_kv(torch.randn(2, 3, 16)))
    mask[1, 0] = 0
    with pytest.raises(ValueError, match="position 0"):
        enc.pair_vectors(states, mask, kv)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fusion_positions_equal_the_full_forward_there(checkpointing: bool) -> None:
    torch.manual_seed(5)
    enc = CrossAttentionFusionEncoder(
        width=32,
        layers=3,
        heads=4,
        ffn_dim=64,
        vision_width=24,
        dropout=0.0,
        attn_dropout=0.0,
        gradient_checkpointing=checkpointing,
    )
    text = torch.randn(4, 6, 32, requires_grad=True)
    image = torch.randn(4, 5, 24, requires_grad=True)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[2, 3:] = 0
    positions = torch.tensor([[0, 1], [0, 5], [2, 0], [4, 3]])
    full = enc(text, mask, image)
    want = torch.gather(full, 1, positions[..., None].expand(-1, -1, 32))
    got = enc(text, mask, image, positions=positions)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    g_want = torch.autograd.grad(want.sum(), [text, image])
    g_got = torch.autograd.grad(got.sum(), [text, image])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_model_fuse_positions_with_a_fusion_encoder_without_them() -> None:
    """A plug-in fusion encoder whose forward has no ``positions``: fuse picks the rows."""

    class Plain(CrossAttentionFusionEncoder):
        def forward(
            self, text_states, text_mask, image_states=None, image_mask=None, image_kv=None
        ):
            return super().forward(text_states, text_mask, image_states, image_mask, image_kv)

    torch.manual_seed(6)
    model = _tiny_xfm({"name": "cross_attention", "layers": 2, "heads": 2, "ffn_dim": 48}).eval()
    text, image = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    mask = torch.ones(2, 5, dtype=torch.long)
    positions = torch.tensor([[0, 4], [1, 2]])
    fast = model.fuse(text, mask, image, positions=positions)
    plain = Plain(model.fusion_encoder.config)
    plain.load_state_dict(model.fusion_encoder.state_dict())
    model.fusion_encoder = plain.eval()
    torch.testing.assert_close(
        model.fuse(text, mask, image, positions=positions), fast, rtol=0, atol=2e-6
    )
