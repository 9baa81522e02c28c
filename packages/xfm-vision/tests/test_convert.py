"""Key mapping of official / timm checkpoints through xfm.core's KeyMapper."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

from xfm.core.checkpoint import CheckpointMismatchError, KeyMapper
from xfm.vision import BEiTv2, ViT, beit_rules, load_official_vision, load_timm
from xfm.vision.convert import official_vision_key_mapper

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:timm.layers.interpolate")
TINY = dict(image_size=32, patch_size=8, width=48, layers=2, heads=4)


def test_rules_keep_prefix_and_invert(golden_dir):
    """The rule list the fusion package reuses: vision keys renamed in place, others untouched."""
    state = load_file(golden_dir / "model.safetensors")
    mapped = KeyMapper(beit_rules("vision_encoder.")).apply(state)
    ours = BEiTv2(**TINY).state_dict()
    vision = {k for k in mapped.state if k.startswith("vision_encoder.")}
    assert vision == {f"vision_encoder.{k}" for k in ours}
    assert {k for k in mapped.state if not k.startswith("vision_encoder.")} == {
        k for k in state if not k.startswith("vision_encoder.")
    }
    assert sorted(mapped.dropped) == [
        f"vision_encoder.blocks.{i}.attn.relative_position_index" for i in range(2)
    ]
    # Export back to the official names (the index buffers are not recreated).
    back = KeyMapper(beit_rules("vision_encoder.")).inverse().apply(mapped.state).state
    assert set(back) == set(state) - set(mapped.dropped)
    for k, v in back.items():
        assert torch.equal(v, state[k])


def test_official_mapper_selects_vision_keys(golden_dir):
    encoder = BEiTv2(**TINY)
    state = load_file(golden_dir / "model.safetensors")
    mapped = official_vision_key_mapper(encoder).apply(state)
    assert set(mapped.state) == set(encoder.state_dict())
    assert any(k.startswith("text_encoder.") for k in mapped.dropped)


def test_width_mismatch_is_reported(golden_dir):
    encoder = BEiTv2(**{**TINY, "width": 64})
    with pytest.raises(
        CheckpointMismatchError,
        match=r"cls_token,mask_token}: checkpoint \[1, 1, 48\] vs model \[1, 1, 64\]",
    ):
        load_official_vision(encoder, golden_dir / "model.safetensors")


def test_missing_blocks_are_reported(golden_dir):
    encoder = BEiTv2(**{**TINY, "layers": 3})
    with pytest.raises(
        CheckpointMismatchError, match=r"(?s)missing from the checkpoint .*blocks\.2\."
    ):
        load_official_vision(encoder, golden_dir / "model.safetensors")


def test_non_square_table_cannot_be_inferred():
    encoder = BEiTv2(**TINY)
    state = {k: v for k, v in BEiTv2(**{**TINY, "image_size": (32, 48)}).state_dict().items()}
    with pytest.raises(ValueError, match=r"table of 80 rows is not \(2g-1\)\^2 \+ 3"):
        load_official_vision(encoder, state, prefix="")


def test_timm_vit_of_another_grid_is_resampled(randomize):
    ref = randomize(
        TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=0),
        seed=21,
    ).eval()
    ours = ViT(**{**TINY, "image_size": 48}).eval()
    load_timm(ours, ref.state_dict())  # pos_embed 1+16 -> 1+36 tokens
    ref.set_input_size(img_size=48)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.forward_features(x), atol=1e-5, rtol=1e-5)


def test_load_from_file(tmp_path, randomize):
    from safetensors.torch import save_file

    src = randomize(BEiTv2(**TINY), seed=22)
    path = tmp_path / "beit.safetensors"
    save_file({f"vision_encoder.{k}": v.contiguous() for k, v in src.state_dict().items()}, path)
    dst = BEiTv2(**TINY)
    report = load_official_vision(dst, path)
    assert report.ok
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loader", ["timm", "official"])
def test_checkpoint_for_another_patch_size(loader):
    state = BEiTv2(**TINY).state_dict()  # patch 8
    encoder = BEiTv2(**{**TINY, "patch_size": 16})
    with pytest.raises(
        ValueError,
        match=r"expected patch_embed\.proj\.weight \[D, C, 16, 16\] \(patch_size=16\), "
        r"got \[48, 3, 8, 8\]",
    ):
        if loader == "timm":
            load_timm(encoder, state)
        else:
            load_official_vision(encoder, state, prefix="")
