"""Regenerate ``interp2d_reference.npz``: the official BEiT relative-position resize computed
with ``scipy.interpolate.interp2d`` itself, as the official fine-tuning code does.

``interp2d`` was removed in SciPy 1.14, so run this with an older SciPy, e.g.::

    python -m venv /tmp/oldscipy && /tmp/oldscipy/bin/pip install "scipy==1.13.1" "numpy<2"
    /tmp/oldscipy/bin/python packages/xfm-vision/tests/data/make_interp2d_reference.py

It does not import xfm: the reference is independent of the code under test. It stores random
tables (seeded) and their resized versions for 14x14 -> 24x24 (384px), 14x14 -> 30x30 (480px)
and 4x4 -> 6x6, each with two heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy
from scipy import interpolate

CASES = {"g14_to_g24": (14, 24), "g14_to_g30": (14, 30), "g4_to_g6": (4, 6)}
HEADS = 2


def official_resize(table: np.ndarray, src_size: int, dst_size: int) -> np.ndarray:
    """``table``: [src_size**2 + 3, heads] float32 -> [dst_size**2 + 3, heads] float32."""
    extra = table[-3:]
    body = table[:-3]
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    coords = [-d for d in reversed(dis)] + [0] + dis
    t = dst_size // 2.0
    targets = np.arange(-t, t + 0.1, 1.0)
    out = []
    for h in range(table.shape[1]):
        z = body[:, h].reshape(src_size, src_size).astype(np.float32)
        f = interpolate.interp2d(coords, coords, z, kind="cubic")
        out.append(np.asarray(f(targets, targets), dtype=np.float32).reshape(-1, 1))
    return np.concatenate([np.concatenate(out, axis=1), extra], axis=0)


def main() -> None:
    rng = np.random.default_rng(20240611)
    arrays = {"scipy_version": np.array(scipy.__version__)}
    for name, (g_src, g_dst) in CASES.items():
        src, dst = 2 * g_src - 1, 2 * g_dst - 1
        table = rng.standard_normal((src * src + 3, HEADS)).astype(np.float32)
        arrays[f"{name}_table"] = table
        arrays[f"{name}_resized"] = official_resize(table, src, dst)
    path = Path(__file__).with_name("interp2d_reference.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} with scipy {scipy.__version__}")


if __name__ == "__main__":
    main()
