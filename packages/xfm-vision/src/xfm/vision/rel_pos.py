"""BEiT relative position bias: index construction, the learned table, and its resize.

A grid of ``h x w`` patches plus one CLS token attends with an additive bias looked up in a
learned table of ``(2h-1)(2w-1) + 3`` rows (one column per head). Patch ``i`` at ``(r_i, c_i)``
attending to patch ``j`` uses the row of the offset ``(r_i - r_j, c_i - c_j)``; the three extra
rows at the end hold the CLS entries: ``L-3`` for CLS -> patch (query CLS), ``L-2`` for
patch -> CLS, ``L-1`` for CLS -> CLS, where ``L`` is the table length.

:func:`resize_rel_pos_table` moves a table to another grid with the method of the official BEiT
fine-tuning code: the source offsets are laid on a geometric progression that stretches them
over the target range, and a bicubic interpolating spline is sampled at the integer target
offsets. The original relied on ``scipy.interpolate.interp2d``, removed in SciPy 1.14; the same
FITPACK spline (``s=0``, cubic, evaluation clamped to the data range) is computed here with
``scipy.interpolate.RectBivariateSpline``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "NUM_EXTRA_REL_POS",
    "RelativePositionBias",
    "geometric_offsets",
    "num_relative_distances",
    "relative_position_index",
    "resize_rel_pos_table",
]

NUM_EXTRA_REL_POS = 3
"""Table rows after the patch offsets: CLS -> patch, patch -> CLS, CLS -> CLS."""


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if h < 1 or w < 1:
        raise ValueError(f"a patch grid needs positive sides; got {(h, w)}")
    return int(h), int(w)


def num_relative_distances(grid: int | tuple[int, int]) -> int:
    """Rows of the bias table of a ``grid`` (``(2h-1)(2w-1) + 3``)."""
    h, w = _grid(grid)
    return (2 * h - 1) * (2 * w - 1) + NUM_EXTRA_REL_POS


def relative_position_index(
    grid: int | tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Table row used by every (query, key) pair of ``[CLS] + patches`` (row-major patches).

    Returns:
        ``[N+1, N+1]`` int64 with ``N = h * w``.
    """
    h, w = _grid(grid)
    span = 2 * w - 1
    # Row/column of every patch in raster order.
    row = torch.arange(h, device=device).repeat_interleave(w)
    col = torch.arange(w, device=device).repeat(h)
    offset = (row[:, None] - row[None, :] + h - 1) * span + (col[:, None] - col[None, :] + w - 1)
    total = num_relative_distances((h, w))
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long, device=device)
    index[1:, 1:] = offset
    index[0, :] = total - 3  # CLS query -> every key
    index[:, 0] = total - 2  # every query -> CLS key
    index[0, 0] = total - 1
    return index


class RelativePositionBias(nn.Module):
    """A learned relative position bias for ``[CLS] + h*w`` tokens.

    Parameters: ``table`` ``[(2h-1)(2w-1)+3, heads]`` (zero-initialised, as in BEiT). The index
    is a non-persistent buffer rebuilt from the grid. Calling the module returns the bias
    ``[heads, N+1, N+1]`` to add to the attention scores.
    """

    def __init__(self, grid: int | tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = _grid(grid)
        self.num_heads = num_heads
        self.table = nn.Parameter(torch.zeros(num_relative_distances(self.grid), num_heads))
        self.register_buffer("index", relative_position_index(self.grid), persistent=False)

    def forward(self) -> torch.Tensor:
        """The bias ``[H, N+1, N+1]``."""
        n = self.index.shape[0]
        # index_select: its backward (index_add) is ~9x faster on CPU than that of table[index]
        bias = self.table.index_select(0, self.index.view(-1)).view(n, n, self.num_heads)
        # Contiguous [H, N+1, N+1]: SDPA's CPU kernels read a contiguous mask faster.
        return bias.permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def set_grid(self, grid: int | tuple[int, int]) -> None:
        """Move to another patch grid, resizing the table with :func:`resize_rel_pos_table`."""
        grid = _grid(grid)
        if grid == self.grid:
            return
        table = resize_rel_pos_table(self.table.detach(), self.grid, grid)
        self.table = nn.Parameter(table, requires_grad=self.table.requires_grad)
        self.index = relative_position_index(grid, device=self.index.device)
        self.grid = grid

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_heads={self.num_heads}"


def _bisect_ratio(n: int, target: float) -> float:
    """Ratio ``q`` with ``1 + q + ... + q^(n-1)`` close to ``target`` (BEiT's bisection)."""
    lo, hi = 1.01, 1.5
    q = lo
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        total = (1.0 - q**n) / (1.0 - q)
        if total > target:
            hi = q
        else:
            lo = q
    return q


def geometric_offsets(src_side: int, dst_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target coordinates of one axis of the offset grid.

    ``src_side``/``dst_side`` are the table sides ``2g - 1``. The source offsets ``0, +-1, ...``
    are moved to ``0, +-1, +-(1+q), +-(1+q+q^2), ...`` with ``q`` chosen by bisection so the
    outermost one reaches the target's outermost integer offset.

    Returns:
        ``(src [src_side], dst [dst_side])`` float64 coordinates, both increasing.
    """
    half = src_side // 2
    q = _bisect_ratio(half, float(dst_side // 2))
    steps = []
    pos = 1.0
    for i in range(half):
        steps.append(pos)
        pos += q ** (i + 1)
    right = np.asarray(steps, dtype=np.float64)
    src = np.concatenate([-right[::-1], [0.0], right])
    t = dst_side // 2
    dst = np.arange(-t, t + 1, dtype=np.float64)
    return src, dst


def resize_rel_pos_table(
    table: torch.Tensor,
    old_grid: int | tuple[int, int],
    new_grid: int | tuple[int, int],
) -> torch.Tensor:
    """Resize a BEiT relative position bias table to another patch grid.

    The ``(2h-1) x (2w-1)`` offset part of every head is interpolated with a bicubic spline on
    geometrically stretched source coordinates (:func:`geometric_offsets`, per axis, so
    non-square grids work too); the three CLS rows are kept. For square grids this is the
    resize of the official BEiT / X-FM fine-tuning code.

    Args:
        table: ``[(2h-1)(2w-1)+3, H]`` for ``old_grid`` ``(h, w)``.
        old_grid: the grid the table was trained on, e.g. ``(14, 14)`` at 224px / patch 16.
        new_grid: the target grid, e.g. ``(24, 24)`` at 384px.

    Returns:
        ``[(2h'-1)(2w'-1)+3, H]``, same dtype and device as ``table``.
    """
    from scipy.interpolate import RectBivariateSpline

    old_h, old_w = _grid(old_grid)
    new_h, new_w = _grid(new_grid)
    if table.dim() != 2 or table.shape[0] != num_relative_distances((old_h, old_w)):
        raise ValueError(
            f"relative position table for grid {(old_h, old_w)} must be "
            f"[{num_relative_distances((old_h, old_w))}, heads]; got {tuple(table.shape)}"
        )
    if (old_h, old_w) == (new_h, new_w):
        return table.clone()
    src_rows, src_cols = 2 * old_h - 1, 2 * old_w - 1
    dst_rows, dst_cols = 2 * new_h - 1, 2 * new_w - 1
    y_src, y_dst = geometric_offsets(src_rows, dst_rows)
    x_src, x_dst = geometric_offsets(src_cols, dst_cols)
    offsets = table[:-NUM_EXTRA_REL_POS].detach().float().cpu().numpy()
    heads = []
    for h in range(table.shape[1]):
        z = offsets[:, h].reshape(src_rows, src_cols).astype(np.float64)
        spline = RectBivariateSpline(y_src, x_src, z, kx=3, ky=3, s=0)
        heads.append(spline(y_dst, x_dst, grid=True).astype(np.float32).reshape(-1))
    resized = torch.from_numpy(np.stack(heads, axis=1)).to(device=table.device, dtype=table.dtype)
    return torch.cat([resized, table[-NUM_EXTRA_REL_POS:].detach()], dim=0)
