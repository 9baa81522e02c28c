"""Our PatchEmbed / resample_abs_pos_embed equal timm's, and building a tower imports neither
timm nor torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.layers import resample_abs_pos_embed as timm_resample

from xfm.vision.patch_embed import PatchEmbed, resample_abs_pos_embed


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_patch_embed_matches_timm(size):
    torch.manual_seed(0)
    ours = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24)
    ref = TimmPatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24, strict_img_size=False)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    images = torch.randn(2, 3, *size)
    out = ours(images)
    assert out.shape == (2, (size[0] // 8) * (size[1] // 8), 24)
    torch.testing.assert_close(out, ref(images), atol=0, rtol=0)
    assert ours.grid_size == (4, 4) and ours.num_patches == 16
    ours.set_input_size((48, 32))
    assert ours.grid_size == (6, 4) and ours.num_patches == 24


def test_patch_embed_rejects_a_size_that_is_not_a_multiple():
    with pytest.raises(ValueError, match=r"30x32 is not a multiple of the patch size 8x8"):
        PatchEmbed(img_size=32, patch_size=8, embed_dim=4)(torch.zeros(1, 3, 30, 32))


@pytest.mark.parametrize(
    "old,new", [((4, 4), (6, 6)), ((6, 6), (4, 4)), ((4, 4), (5, 3)), ((3, 5), (4, 4))]
)
def test_resample_matches_timm(old, new):
    torch.manual_seed(1)
    pos = torch.randn(1, 1 + old[0] * old[1], 16)
    ours = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old))
    ref = timm_resample(pos, new_size=list(new), old_size=list(old))
    assert ours.shape == (1, 1 + new[0] * new[1], 16)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[:, :1], pos[:, :1], atol=0, rtol=0)  # CLS unchanged


def test_resample_same_size_is_identity_and_bad_sizes_explained():
    pos = torch.randn(1, 17, 8)
    assert resample_abs_pos_embed(pos, new_size=[4, 4]) is pos
    with pytest.raises(ValueError, match="old_size 3x3 does not match the 16 patch positions"):
        resample_abs_pos_embed(pos, new_size=[5, 5], old_size=[3, 3])
    with pytest.raises(ValueError, match="not a square grid"):
        resample_abs_pos_embed(torch.randn(1, 13, 8), new_size=[4, 4])


def test_building_and_running_a_tower_imports_neither_timm_nor_torchvision():
    code = (
        "import sys, torch\n"
        "from xfm.vision import BEiTv2\n"
        "m = BEiTv2(image_size=32, patch_size=8, width=16, layers=1, heads=2)\n"
        "m(torch.zeros(1, 3, 32, 32))\n"
        "heavy = sorted(n for n in ('timm', 'torchvision') if n in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
