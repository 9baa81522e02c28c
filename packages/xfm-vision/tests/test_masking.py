"""Block-wise masking: invariants as properties (hypothesis) plus the BEiT default setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from xfm.vision import BlockMaskingGenerator


def check_invariants(gen: BlockMaskingGenerator, mask: np.ndarray, blocks) -> None:
    assert mask.shape == (gen.height, gen.width) and mask.dtype == bool
    assert int(mask.sum()) == gen.num_masking_patches
    labels, count = ndimage.label(mask)  # 4-connectivity
    sizes = np.bincount(labels.ravel())[1:]
    assert count >= 1 and sizes.min() >= gen.min_num_patches, sizes
    assert blocks, "at least one rectangle is placed"
    for b in blocks:
        area = b.height * b.width
        assert gen.min_num_patches <= area <= gen.max_num_patches
        assert gen.min_aspect <= b.height / b.width <= gen.max_aspect
        assert b.top >= 0 and b.top + b.height <= gen.height
        assert b.left >= 0 and b.left + b.width <= gen.width
        assert mask[b.top : b.top + b.height, b.left : b.left + b.width].all()


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(2, 16),
    w=st.integers(2, 16),
    min_patches=st.integers(1, 24),
    fraction=st.floats(0.0, 1.0),
    max_fraction=st.none() | st.floats(0.0, 1.0),
    min_aspect=st.sampled_from([0.3, 0.5, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants(h, w, min_patches, fraction, max_fraction, min_aspect, seed):
    total = h * w
    assume(min_patches <= total)
    num = min_patches + round(fraction * (total - min_patches))
    # max_num_patches in [min_patches, num], or the default (num).
    most = None if max_fraction is None else min_patches + round(max_fraction * (num - min_patches))
    try:
        gen = BlockMaskingGenerator(
            (h, w), num, min_patches, max_num_patches=most, min_aspect=min_aspect
        )
    except ValueError:
        assume(False)  # no rectangle of this size/aspect fits the grid
    mask, blocks = gen.sample(np.random.default_rng(seed))
    check_invariants(gen, mask, blocks)
    again, _ = gen.sample(np.random.default_rng(seed))
    assert np.array_equal(mask, again)


def test_beit_default_many_seeds():
    gen = BlockMaskingGenerator()  # 14x14, 75 patches, blocks >= 16, aspect [0.3, 1/0.3]
    assert (gen.height, gen.width, gen.num_masking_patches, gen.min_num_patches) == (14, 14, 75, 16)
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(300):
        mask, blocks = gen.sample(rng)
        check_invariants(gen, mask, blocks)
        masks.append(mask)
    # Masks vary, and every patch gets masked sometimes (no positional bias to a corner).
    assert len({m.tobytes() for m in masks}) == len(masks)
    assert np.stack(masks).any(axis=0).all()


def test_determinism_and_batch():
    gen = BlockMaskingGenerator(seed=5)
    a = BlockMaskingGenerator(seed=5)
    assert torch.equal(gen(), a())  # same seed, same stream
    assert torch.equal(gen(123), gen(np.random.default_rng(123)))
    batch = gen.batch(4, rng=7)
    assert batch.shape == (4, 196) and batch.dtype == torch.bool
    assert (batch.sum(1) == 75).all()
    rng = np.random.default_rng(7)
    first = gen(rng)
    assert torch.equal(batch[0], first.reshape(-1))  # row-major flattening of the [h, w] mask


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(input_size=4, num_masking_patches=75),
            r"num_masking_patches must be in \[1, 16\] .* got 75",
        ),
        (
            dict(num_masking_patches=10, min_num_patches=16),
            r"min_num_patches must be in \[1, num_masking_patches=10\]; got 16",
        ),
        (
            dict(input_size=(3, 10), num_masking_patches=16, min_num_patches=16),
            r"no rectangle of area in \[16, 16\]",
        ),
        (dict(max_num_patches=8), r"max_num_patches \(8\) must be >= min_num_patches \(16\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlockMaskingGenerator(**kwargs)


class _Masks(torch.utils.data.Dataset):
    def __init__(self, gen: BlockMaskingGenerator) -> None:
        self.gen = gen

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.gen().reshape(-1)


@pytest.mark.parametrize("seed", [None, 3])
def test_dataloader_workers_draw_different_masks(seed):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        _Masks(BlockMaskingGenerator(seed=seed)), batch_size=None, num_workers=2
    )
    masks = [m for m in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1
    assert not torch.equal(masks[0], masks[1])  # different workers, different streams
    torch.manual_seed(0)
    again = list(loader)
    assert all(torch.equal(a, b) for a, b in zip(masks, again))  # reproducible
