"""BEiT block-wise masking for masked image modelling.

Rectangles of at least ``min_num_patches`` patches with an aspect ratio in
``[min_aspect, 1 / min_aspect]`` are placed at random until exactly ``num_masking_patches``
patches of the ``h x w`` grid are masked (75 of 14 x 14 in BEiT and X-FM):

1. As in BEiT, a rectangle of area ``U(min_num_patches, max_block)`` and log-uniform aspect
   ratio is placed at a random position; it is kept when it masks at least one new patch and no
   more than are still needed (``max_block`` is the number still needed, capped by
   ``max_num_patches``). Ten tries per rectangle.
2. BEiT stops when ten tries fail, which can leave fewer patches masked than asked for. Here the
   remaining patches are then taken from the unmasked neighbours (4-connectivity) of the mask,
   one at a time at random, so the count is exact and the mask stays made of blocks.

Invariants (tested): exactly ``num_masking_patches`` masked; every 4-connected component of the
mask has at least ``min_num_patches`` patches; every rectangle placed has an area in
``[min_num_patches, max_num_patches]`` and an aspect ratio within bounds; the same generator
seed gives the same mask.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BlockMaskingGenerator", "MaskBlock"]

Rng = np.random.Generator | int | None


@dataclass(frozen=True)
class MaskBlock:
    """One placed rectangle: top-left ``(top, left)`` and size ``(height, width)``."""

    top: int
    left: int
    height: int
    width: int


class BlockMaskingGenerator:
    """Sample BEiT block-wise masks of a patch grid.

    Args:
        input_size: patch grid side, or ``(h, w)`` (14 for 224px / patch 16).
        num_masking_patches: patches to mask per image (exactly).
        min_num_patches: smallest rectangle area (and smallest connected masked region).
        max_num_patches: largest rectangle area (default: ``num_masking_patches``).
        min_aspect: smallest ``height / width`` of a rectangle; the largest is
            ``max_aspect`` (default ``1 / min_aspect``).
        seed: seed of the generator used when a call passes none. ``None``: seeded from
            ``torch.initial_seed()`` of the process (reproducible after ``torch.manual_seed``,
            and different in every DataLoader worker and epoch). In a DataLoader worker an int
            seed is combined with the worker id, so workers never repeat each other's masks.

    Call it with an explicit ``numpy.random.Generator`` (or an int seed) for reproducible
    masks: ``gen(np.random.default_rng(0))`` -> ``[h, w]`` bool tensor.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 14,
        num_masking_patches: int = 75,
        min_num_patches: int = 16,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        seed: int | None = None,
    ) -> None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.height, self.width = int(h), int(w)
        total = self.height * self.width
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size must be positive; got {(h, w)}")
        if not 0 < num_masking_patches <= total:
            raise ValueError(
                f"num_masking_patches must be in [1, {total}] for a {self.height}x{self.width} "
                f"grid; got {num_masking_patches}"
            )
        if not 0 < min_num_patches <= num_masking_patches:
            raise ValueError(
                f"min_num_patches must be in [1, num_masking_patches={num_masking_patches}]; "
                f"got {min_num_patches}"
            )
        max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        if max_num_patches < min_num_patches:
            raise ValueError(
                f"max_num_patches ({max_num_patches}) must be >= min_num_patches ({min_num_patches})"
            )
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect; got {min_aspect}, {max_aspect}")
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.min_aspect, self.max_aspect = float(min_aspect), float(max_aspect)
        self._log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))
        if not self._fits_any_rectangle():
            raise ValueError(
                f"no rectangle of area in [{min_num_patches}, "
                f"{min(num_masking_patches, max_num_patches)}] with aspect ratio in "
                f"[{self.min_aspect:.3g}, {self.max_aspect:.3g}] fits a "
                f"{self.height}x{self.width} grid"
            )
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_pid = -1

    def __repr__(self) -> str:
        return (
            f"BlockMaskingGenerator(input_size={(self.height, self.width)}, "
            f"num_masking_patches={self.num_masking_patches}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"aspect=[{self.min_aspect:.3g}, {self.max_aspect:.3g}])"
        )

    @property
    def num_patches(self) -> int:
        """Patches in the grid."""
        return self.height * self.width

    def _fits_any_rectangle(self) -> bool:
        largest = min(self.num_masking_patches, self.max_num_patches)
        return any(
            self._valid_shape(h, w) and h * w <= largest
            for h in range(1, self.height + 1)
            for w in range(1, self.width + 1)
        )

    def _valid_shape(self, h: int, w: int) -> bool:
        return (
            1 <= h <= self.height
            and 1 <= w <= self.width
            and self.min_num_patches <= h * w <= self.max_num_patches
            and self.min_aspect <= h / w <= self.max_aspect
        )

    def _default_rng(self) -> np.random.Generator:
        """This process's generator, created on first use (after a DataLoader fork)."""
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            worker = torch.utils.data.get_worker_info()
            if self.seed is None:
                entropy = [torch.initial_seed()]
            else:
                entropy = [self.seed] + ([worker.id] if worker is not None else [])
            self._rng = np.random.default_rng(entropy)
            self._rng_pid = pid
        return self._rng

    def _rng_of(self, rng: Rng) -> np.random.Generator:
        if rng is None:
            return self._default_rng()
        if isinstance(rng, np.random.Generator):
            return rng
        if isinstance(rng, (int, np.integer)):
            return np.random.default_rng(int(rng))
        raise TypeError(f"rng must be a numpy Generator, an int seed or None; got {type(rng)}")

    def _place_block(
        self, mask: np.ndarray, budget: int, rng: np.random.Generator
    ) -> MaskBlock | None:
        """Try ten rectangles; mask the first that adds 1..``budget`` patches."""
        high = max(self.min_num_patches, min(budget, self.max_num_patches))
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, high)
            aspect = math.exp(rng.uniform(*self._log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not self._valid_shape(h, w):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return MaskBlock(top, left, h, w)
        return None

    def _grow(self, mask: np.ndarray, count: int, rng: np.random.Generator) -> None:
        """Mask ``count`` more patches, each 4-adjacent to the mask."""
        for _ in range(count):
            near = np.zeros_like(mask)
            near[1:, :] |= mask[:-1, :]
            near[:-1, :] |= mask[1:, :]
            near[:, 1:] |= mask[:, :-1]
            near[:, :-1] |= mask[:, 1:]
            candidates = np.flatnonzero(near & ~mask)
            mask.flat[candidates[rng.integers(len(candidates))]] = True

    def sample(self, rng: Rng = None) -> tuple[np.ndarray, list[MaskBlock]]:
        """One mask ``[h, w]`` (numpy bool) and the rectangles placed in step 1."""
        rng = self._rng_of(rng)
        mask = np.zeros((self.height, self.width), dtype=bool)
        blocks: list[MaskBlock] = []
        count = 0
        first_tries = 0
        while count < self.num_masking_patches:
            budget = self.num_masking_patches - count
            block = self._place_block(mask, budget, rng)
            if block is None:
                if count == 0:  # nothing to grow from yet: keep trying rectangles
                    first_tries += 1
                    if first_tries > 1000:
                        raise RuntimeError(f"{self!r} could not place a first rectangle")
                    continue
                self._grow(mask, budget, rng)
                break
            blocks.append(block)
            count = int(mask.sum())
        return mask, blocks

    def __call__(self, rng: Rng = None) -> torch.Tensor:
        """One mask ``[h, w]`` bool tensor (``True`` = masked)."""
        return torch.from_numpy(self.sample(rng)[0])

    def batch(self, batch_size: int, rng: Rng = None) -> torch.Tensor:
        """``batch_size`` independent masks, flattened row-major: ``[B, N]`` bool."""
        rng = self._rng_of(rng)
        return torch.from_numpy(
            np.stack([self.sample(rng)[0].reshape(-1) for _ in range(batch_size)])
        )
