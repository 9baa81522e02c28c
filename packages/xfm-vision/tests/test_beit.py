"""BEiT-v2 encoder: official X-FM golden vectors, timm parity, mask token, options, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from timm.models.beit import Beit

from xfm.core import registry
from xfm.core.attention import runnable_backends, use_backend
from xfm.vision import BEiTv2, BEiTv2Config, load_official_vision, load_timm

BACKENDS = runnable_backends("cpu")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:timm.layers.interpolate")
TINY = dict(image_size=32, patch_size=8, width=48, layers=2, heads=4)


def tiny(**overrides) -> BEiTv2:
    return BEiTv2(**{**TINY, "drop_path_rate": 0.0, **overrides}).eval()


def timm_tiny(image_size=32, shared=False) -> Beit:
    return Beit(
        img_size=image_size,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=4,
        num_classes=0,
        use_abs_pos_emb=False,
        use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared,
        init_values=0.1,
    ).eval()


# ---------------------------------------------------------------- official X-FM golden vectors


@pytest.fixture(scope="module")
def golden(golden_dir):
    return (
        golden_dir / "model.safetensors",
        load_file(golden_dir / "inputs.safetensors"),
        load_file(golden_dir / "outputs.safetensors"),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_vision_embeds(golden, backend):
    weights, inputs, outputs = golden
    encoder = tiny()
    report = load_official_vision(encoder, weights)
    assert report.ok and "vision_encoder.blocks.0.attn.relative_position_index" in report.dropped
    with use_backend(backend), torch.no_grad():
        plain = encoder(inputs["image"])
        masked = encoder(inputs["image"], mask=inputs["image_mask"])
    torch.testing.assert_close(plain, outputs["vision_embeds"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked, outputs["vision_embeds_masked"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain, masked, atol=1e-3)  # the mask really changes the output


def test_golden_via_registry(golden):
    weights, inputs, outputs = golden
    encoder = registry.create("vision_encoder", "beit_v2", **TINY).eval()
    load_official_vision(encoder, weights)
    with torch.no_grad():
        out = encoder(inputs["image"])
    torch.testing.assert_close(out, outputs["vision_embeds"], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- timm parity


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [32, 48, (48, 64)])
def test_timm_beit_parity(randomize, backend, size):
    """``cls`` output == timm ``forward_features``; other sizes use timm's own resized tables."""
    ref = randomize(timm_tiny(), seed=1)
    if size != 32:
        ref.set_input_size(img_size=size)
    ours = tiny(image_size=size, output="cls")
    report = load_timm(ours, ref)
    assert report.ok and report.ignored_missing == ["mask_token"]
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.forward_features(x)
        with use_backend(backend):
            got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_beit_gradient_parity(randomize, backend):
    """Training step (dropout/drop path 0): every gradient equals timm's, on every backend
    (the learned tables included: CPU SDPA cannot return their gradient, see attention.py)."""
    ref = randomize(timm_tiny(), seed=8).train()
    ours = tiny(output="cls").train()
    load_timm(ours, ref)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 3, 32, 32, generator=g)
    weight = torch.randn(3, 17, 48, generator=g)
    (ref.forward_features(x) * weight).sum().backward()
    with use_backend(backend):
        (ours(x) * weight).sum().backward()
    timm_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if name == "mask_token":
            assert p.grad is None
            continue
        other = timm_params[name.replace("rel_pos.table", "attn.relative_position_bias_table")]
        torch.testing.assert_close(p.grad, other.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("rel_pos", ["per_block", "shared"])
def test_timm_shared_table(randomize, rel_pos):
    """A shared table is copied into every block (per_block) or kept shared."""
    ref = randomize(timm_tiny(shared=True), seed=3)
    ours = tiny(output="cls", rel_pos=rel_pos)
    load_timm(ours, ref)
    table = ref.rel_pos_bias.relative_position_bias_table
    if rel_pos == "per_block":
        for blk in ours.blocks:
            assert torch.equal(blk.rel_pos.table, table)
        assert ours.rel_pos is None
    else:
        assert torch.equal(ours.rel_pos.table, table)
        assert all(blk.rel_pos is None for blk in ours.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.forward_features(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- image size


def test_other_size_needs_set_image_size(randomize):
    encoder = randomize(tiny(), seed=4)
    with pytest.raises(
        ValueError, match=r"set up for images of \(32, 32\), got \(48, 48\).*set_image_size"
    ):
        encoder(torch.randn(1, 3, 48, 48))
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.set_image_size(48)
    assert encoder.grid == (6, 6) and encoder.num_patches == 36
    assert encoder(torch.randn(1, 3, 48, 48)).shape == (1, 37, 48)
    # Loading the 32px weights into a tower built at 48px resizes the same way (BEiT method).
    built = tiny(image_size=48)
    load_official_vision(built, state, prefix="")
    for a, b in zip(built.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- mask token and outputs


def test_mask_token_replaces_masked_patches(randomize):
    encoder = randomize(tiny(), seed=5)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 15]] = True
    mask[1, 7] = True
    with torch.no_grad():
        patches = encoder.patch_embed(x)
        tokens = encoder.embed(x, mask)
        plain = encoder.embed(x)
    assert torch.equal(tokens[:, 0], encoder.cls_token[0].expand(2, -1))
    expected = torch.where(mask[..., None], encoder.mask_token, patches)
    assert torch.equal(tokens[:, 1:], expected)
    assert torch.equal(plain[:, 1:], patches)
    with torch.no_grad():
        none_masked = encoder(x, mask=torch.zeros(2, 16, dtype=torch.bool))
        torch.testing.assert_close(none_masked, encoder(x), atol=0, rtol=0)


def test_mask_token_gradient_only_with_mask():
    encoder = tiny()
    x = torch.randn(2, 3, 32, 32)
    encoder(x).sum().backward()
    assert encoder.mask_token.grad is None or not encoder.mask_token.grad.any()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 2] = True
    encoder(x, mask=mask).sum().backward()
    assert encoder.mask_token.grad.abs().sum() > 0


def test_output_modes(randomize):
    xfm = randomize(tiny(), seed=6)
    cls = tiny(output="cls")
    cls.load_state_dict(xfm.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, feats = xfm(x), cls(x)
    assert out.shape == feats.shape == (2, 17, 48)
    torch.testing.assert_close(out[:, 1:], xfm.fc_norm(feats[:, 1:]))
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(dim=1))


def test_gradient_checkpointing_same_gradients(randomize):
    a = randomize(tiny(), seed=7).train()
    b = tiny(gradient_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) < 0.4
    a(x, mask=mask).square().mean().backward()
    b(x, mask=mask).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_drop_path_is_stochastic_in_training():
    encoder = tiny(drop_path_rate=0.5, layers=4)
    assert [round(b.drop_path.p, 4) for b in encoder.blocks] == [0.0, 0.1667, 0.3333, 0.5]
    x = torch.randn(4, 3, 32, 32)
    encoder.train()
    torch.manual_seed(0)
    first = encoder(x)
    second = encoder(x)
    assert not torch.allclose(first, second)
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x), atol=0, rtol=0)


def test_default_is_base_config():
    cfg = BEiTv2Config()
    assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads) == (
        224,
        16,
        768,
        12,
        12,
    )
    assert (cfg.layer_scale_init, cfg.layer_norm_eps, cfg.qkv_bias, cfg.rel_pos) == (
        0.1,
        1e-6,
        "qv",
        "per_block",
    )
    encoder = BEiTv2(layers=1)
    assert encoder.grid == (14, 14) and encoder.num_patches == 196 and encoder.width == 768
    assert encoder.blocks[0].rel_pos.table.shape == (732, 12)


def test_registry_and_config_object():
    cfg = BEiTv2Config(**TINY)
    a = registry.create("vision_encoder", "beit_v2", **TINY)
    b = BEiTv2(cfg, heads=2)
    assert isinstance(a, BEiTv2) and a.config == cfg
    assert b.config.heads == 2 and cfg.heads == 4
    c = BEiTv2({"image_size": 32, "patch_size": 8}, width=24, layers=1, heads=2)
    assert c.width == 24


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: (torch.randn(1, 4, 32, 32), None), ValueError, r"3 channels .* got 4 channels"),
        (
            lambda: (torch.randn(1, 3, 30, 32), None),
            ValueError,
            r"\(30, 32\) is not divisible by the patch size 8",
        ),
        (
            lambda: (torch.randn(3, 32, 32), None),
            ValueError,
            r"images \[B, 3, H, W\]; got \(3, 32, 32\)",
        ),
        (
            lambda: (torch.randn(2, 3, 32, 32), torch.zeros(2, 15, dtype=torch.bool)),
            ValueError,
            r"\[B, N\] = \[2, 16\].*got \(2, 15\)",
        ),
        (
            lambda: (torch.randn(2, 3, 32, 32), torch.zeros(1, 16, dtype=torch.bool)),
            ValueError,
            r"\[2, 16\].*got \(1, 16\)",
        ),
        (
            lambda: (torch.randn(2, 3, 32, 32), torch.zeros(2, 16)),
            ValueError,
            r"bool tensor \[B, N\]; got torch.float32",
        ),
    ],
)
def test_bad_inputs(make, error, message):
    images, mask = make()
    with pytest.raises(error, match=message):
        tiny()(images, mask=mask)


def test_mask_without_mask_token():
    with pytest.raises(ValueError, match="mask_token=False"):
        tiny(mask_token=False)(torch.randn(1, 3, 32, 32), mask=torch.zeros(1, 16, dtype=torch.bool))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            {"image_size": 30},
            ValueError,
            r"image_size \(30, 30\) must be divisible by patch_size 8",
        ),
        ({"width": 50}, ValueError, r"width 50 must be divisible by heads 4"),
        ({"rel_pos": "global"}, ValueError, r"rel_pos must be one of .*'global'"),
        ({"output": "mean"}, ValueError, r"output must be one of .*'mean'"),
        ({"depth": 3}, TypeError, r"no field\(s\) \['depth'\]; valid fields"),
    ],
)
def test_bad_config(overrides, error, message):
    with pytest.raises(error, match=message):
        BEiTv2(**{**TINY, **overrides})


def test_checkpoint_with_other_patch_size(golden_dir):
    encoder = BEiTv2(image_size=32, patch_size=16, width=48, layers=2, heads=4)
    with pytest.raises(
        ValueError, match=r"\[D, C, 16, 16\] \(patch_size=16\), got \[48, 3, 8, 8\]"
    ):
        load_official_vision(encoder, golden_dir / "model.safetensors")
