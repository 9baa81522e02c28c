"""Plain ViT tower: timm parity (absolute position embedding, optional LayerScale), registry."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from xfm.core import registry
from xfm.core.attention import runnable_backends, use_backend
from xfm.vision import ViT, ViTConfig, load_timm

BACKENDS = runnable_backends("cpu")
TINY = dict(image_size=32, patch_size=8, width=48, layers=2, heads=4)


def timm_tiny(init_values=None) -> TimmViT:
    return TimmViT(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=4,
        num_classes=0,
        init_values=init_values,
    ).eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("layer_scale", [None, 0.1])
def test_timm_vit_parity(randomize, backend, size, layer_scale):
    ref = randomize(timm_tiny(layer_scale), seed=11)
    if size != 32:
        ref.set_input_size(img_size=size)  # timm resamples its pos_embed
    ours = registry.create(
        "vision_encoder", "vit", **{**TINY, "image_size": size}, layer_scale_init=layer_scale
    ).eval()
    report = load_timm(ours, ref)
    assert report.ok
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = ref.forward_features(x)
        with use_backend(backend):
            got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_set_image_size_resamples_pos_embed_like_timm(randomize):
    ours = randomize(ViT(**TINY), seed=13).eval()
    ref = timm_tiny()
    with torch.no_grad():
        ref.pos_embed.copy_(ours.pos_embed)
    ours.set_image_size(48)
    ref.set_input_size(img_size=48)
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed)
    assert ours(torch.randn(1, 3, 48, 48)).shape == (1, 37, 48)


def test_defaults_and_mask():
    cfg = ViTConfig()
    assert (cfg.qkv_bias, cfg.rel_pos, cfg.abs_pos, cfg.layer_scale_init, cfg.output) == (
        "qkv",
        "none",
        True,
        None,
        "cls",
    )
    vit = ViT(**TINY).eval()
    assert vit.pos_embed.shape == (1, 17, 48) and all(b.rel_pos is None for b in vit.blocks)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    out = vit(x, mask=mask)
    assert out.shape == (2, 17, 48) and not torch.allclose(out, vit(x))
    xfm = ViT(**TINY, output="xfm").eval()
    xfm.load_state_dict(vit.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(xfm(x)[:, 1:], vit(x)[:, 1:])
