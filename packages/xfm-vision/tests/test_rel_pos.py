"""Relative position index and the BEiT table resize against independent references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline
from timm.models.beit import gen_relative_position_index

from xfm.vision import RelativePositionBias, relative_position_index, resize_rel_pos_table
from xfm.vision.rel_pos import geometric_offsets, num_relative_distances

REFERENCE = Path(__file__).parent / "data" / "interp2d_reference.npz"
CASES = {"g14_to_g24": (14, 24), "g14_to_g30": (14, 30), "g4_to_g6": (4, 6)}


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (14, 14), (6, 9), (9, 5)])
def test_index_matches_timm(grid):
    assert torch.equal(relative_position_index(grid), gen_relative_position_index(grid))


def test_index_matches_official_buffer(golden_dir):
    from safetensors.torch import load_file

    state = load_file(golden_dir / "model.safetensors")
    official = state["vision_encoder.blocks.0.attn.relative_position_index"]
    assert torch.equal(relative_position_index(4), official)


def test_index_semantics():
    h, w = 3, 4
    index = relative_position_index((h, w))
    total = num_relative_distances((h, w))
    assert index.shape == (h * w + 1, h * w + 1)
    assert (index[0, 1:] == total - 3).all() and (index[1:, 0] == total - 2).all()
    assert index[0, 0] == total - 1
    # Two pairs with the same 2-D offset share a row; different offsets never do.
    rows = {}
    for i in range(h * w):
        for j in range(h * w):
            offset = (i // w - j // w, i % w - j % w)
            rows.setdefault(offset, set()).add(int(index[i + 1, j + 1]))
    assert all(len(v) == 1 for v in rows.values())
    assert len({next(iter(v)) for v in rows.values()}) == len(rows) == (2 * h - 1) * (2 * w - 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_resize_equals_scipy_interp2d(case):
    """Reference made by the official code's own ``interp2d`` (SciPy 1.13, see data/)."""
    data = np.load(REFERENCE)
    old, new = CASES[case]
    table = torch.from_numpy(data[f"{case}_table"])
    expected = torch.from_numpy(data[f"{case}_resized"])
    got = resize_rel_pos_table(table, old, new)
    assert got.shape == expected.shape == (num_relative_distances(new), 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def _reference_resize(table: np.ndarray, old: int, new: int) -> np.ndarray:
    """Independent reference: separable not-a-knot cubic splines (what FITPACK's s=0 cubic
    interpolation on a grid is), evaluated with clamping at the data range as FITPACK does."""
    src, dst = 2 * old - 1, 2 * new - 1
    # BEiT's geometric coordinates, written out from their definition (1 + q + ... + q^(k-1)).
    target = dst // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        if sum(q**i for i in range(src // 2)) > target:
            hi = q
        else:
            lo = q
    right = np.cumsum([q**i for i in range(src // 2)])
    coords = np.concatenate([-right[::-1], [0.0], right])
    points = np.clip(np.arange(-target, target + 1, dtype=np.float64), coords[0], coords[-1])
    out = []
    for h in range(table.shape[1]):
        z = table[:-3, h].reshape(src, src).astype(np.float64)
        rows = CubicSpline(coords, z, axis=0, bc_type="not-a-knot")(points)
        out.append(CubicSpline(coords, rows, axis=1, bc_type="not-a-knot")(points).reshape(-1))
    return np.concatenate([np.stack(out, 1), table[-3:]], axis=0)


@pytest.mark.parametrize(("old", "new"), [(14, 24), (14, 30), (4, 6), (7, 12)])
def test_resize_equals_independent_spline(old, new):
    g = torch.Generator().manual_seed(old * 100 + new)
    table = torch.randn(num_relative_distances(old), 3, generator=g)
    got = resize_rel_pos_table(table, old, new)
    expected = torch.from_numpy(_reference_resize(table.numpy(), old, new)).float()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_geometric_offsets_reach_target():
    src, dst = geometric_offsets(27, 47)
    assert src.shape == (27,) and dst.shape == (47,)
    assert src[13] == 0 and np.allclose(src, -src[::-1])
    assert abs(src[-1] - 23) < 1e-3  # stretched to the new outermost offset
    steps = np.diff(src[13:])
    assert np.allclose(steps[1:] / steps[:-1], steps[1] / steps[0])  # geometric


def test_resize_keeps_cls_rows_and_identity():
    table = torch.randn(num_relative_distances(5), 2)
    assert torch.equal(resize_rel_pos_table(table, 5, 5), table)
    out = resize_rel_pos_table(table, 5, 8)
    assert torch.equal(out[-3:], table[-3:])
    # A bias that is constant over offsets stays constant.
    flat = torch.full((num_relative_distances(5), 1), 0.7)
    torch.testing.assert_close(resize_rel_pos_table(flat, 5, 8), torch.full((228, 1), 0.7))


def test_resize_rectangular_grid_per_axis():
    table = torch.randn(num_relative_distances((4, 6)), 2)
    out = resize_rel_pos_table(table, (4, 6), (6, 9))
    assert out.shape == (num_relative_distances((6, 9)), 2)
    # Each axis uses the square-case coordinates of its own side: a bias that only depends on
    # the row offset is resized like a 1-D table.
    row_only = torch.arange(7.0).repeat_interleave(11)[:, None]
    table = torch.cat([row_only, torch.zeros(3, 1)])
    out = resize_rel_pos_table(table, (4, 6), (6, 9))[:-3].view(11, 17)
    assert torch.allclose(out, out[:, :1].expand(-1, 17), atol=1e-5)


def test_resize_rejects_wrong_table():
    with pytest.raises(ValueError, match=r"grid \(4, 4\) must be \[52, heads\]; got \(50, 2\)"):
        resize_rel_pos_table(torch.zeros(50, 2), 4, 6)


def test_module_bias_and_set_grid():
    rel = RelativePositionBias((3, 3), num_heads=2)
    with torch.no_grad():
        rel.table.normal_()
    bias = rel()
    assert bias.shape == (2, 10, 10)
    index = relative_position_index(3)
    for h in range(2):
        assert torch.equal(bias[h], rel.table[:, h][index])
    old = rel.table.detach().clone()
    rel.set_grid((5, 5))
    assert rel().shape == (2, 26, 26)
    torch.testing.assert_close(rel.table.detach(), resize_rel_pos_table(old, 3, 5))
    assert "index" not in rel.state_dict()
