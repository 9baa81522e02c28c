"""Pretraining / evaluation transforms: sizes, normalisation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xfm.vision import (
    NORMALIZATIONS,
    apply_seeded,
    eval_transform,
    normalization,
    pretrain_transform,
)


def solid(color=(200, 100, 50), size=(64, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_eval_normalisation_of_a_solid_image(name):
    mean, std = NORMALIZATIONS[name]
    out = eval_transform(32, normalization=name)(solid())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for c, value in enumerate((200, 100, 50)):
        torch.testing.assert_close(out[c], torch.full((32, 32), (value / 255 - mean[c]) / std[c]))


def test_official_xfm_normalisation_values():
    # configs of the official code: CLIP mean/std
    assert NORMALIZATIONS["xfm"] == (
        (0.48145466, 0.4578275, 0.40821073),
        (0.26862954, 0.26130258, 0.27577711),
    )


def test_eval_squash_vs_center_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    squash = eval_transform(32)(image)
    crop = eval_transform(32, crop_pct=1.0, squash=False)(image)  # shorter side 32, crop center
    assert squash.shape == crop.shape == (3, 32, 32)
    assert not torch.allclose(squash, crop)
    tensor_in = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    torch.testing.assert_close(eval_transform(32, squash=False)(tensor_in), crop, atol=0.05, rtol=0)
    assert eval_transform(48, crop_pct=0.875, squash=False)(image).shape == (3, 48, 48)


def test_pretrain_transform_random_but_seeded():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    t = pretrain_transform(32, rand_augment=True)
    torch.manual_seed(0)
    a = t(image)
    torch.manual_seed(0)
    b = t(image)
    c = t(image)
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pretrain_full_crop_and_flip_is_the_flipped_eval_image():
    """With scale (1, 1) on a square image the crop is the whole image: the pretraining
    transform is then the evaluation resize, mirrored."""
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    flipped = pretrain_transform(32, scale=(1.0, 1.0), hflip=1.0)(image)
    plain = pretrain_transform(32, scale=(1.0, 1.0), hflip=0.0)(image)
    expected = eval_transform(32)(image)
    torch.testing.assert_close(plain, expected, atol=0, rtol=0)
    torch.testing.assert_close(flipped, expected.flip(-1), atol=0, rtol=0)


def test_pretrain_random_resized_crop_takes_a_part_of_the_image():
    # Red channel = column index: a crop of 20% of the area spans at most ~52% of the columns.
    columns = np.tile(np.arange(100, dtype=np.uint8) * 2, (100, 1))
    image = Image.fromarray(np.stack([columns, columns, columns], axis=-1))
    t = pretrain_transform(24, scale=(0.2, 0.2), hflip=0.0, normalization="inception")
    torch.manual_seed(1)
    spans = []
    for _ in range(10):
        out = t(image)
        assert out.shape == (3, 24, 24)
        red = (out[0] * 0.5 + 0.5) * 255  # back to pixel values
        spans.append(float(red.max() - red.min()))
        assert torch.allclose(red, red[:1].expand_as(red), atol=1e-3)  # rows identical
    assert max(spans) < 0.6 * 198
    assert len({round(s, 3) for s in spans}) > 1  # a different crop every call


@pytest.mark.parametrize("size", [224, 384])
def test_configurable_size(size):
    image = solid(size=(500, 375))
    assert pretrain_transform(size)(image).shape == (3, size, size)
    assert eval_transform(size)(image).shape == (3, size, size)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown normalization 'clip'"):
        normalization("clip")
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        normalization(((0.5,), (0.5,)))
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]; got 1.5"):
        eval_transform(32, crop_pct=1.5)
    with pytest.raises(ValueError, match="image_size must be a positive int; got 0"):
        pretrain_transform(0)
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        eval_transform(32, interpolation="cubic")


def test_apply_seeded_depends_only_on_the_generator():
    """Same generator seed, same crop; another seed, another crop; global RNG untouched."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    t = pretrain_transform(32, scale=(0.2, 0.5))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = apply_seeded(t, image, torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # a different global state does not matter
    b = apply_seeded(t, image, torch.Generator().manual_seed(7))
    c = apply_seeded(t, image, torch.Generator().manual_seed(8))
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
