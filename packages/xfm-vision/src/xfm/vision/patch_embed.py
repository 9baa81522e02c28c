"""Patch embedding and absolute position-embedding resampling for the vision towers.

Written here rather than imported from ``timm.layers``: importing timm pulls in torchvision and
sympy (about 200 MB of resident memory and seconds of start-up) into every process that builds a
vision tower. The state-dict names (``proj.weight``, ``proj.bias``) and the numerics equal timm's
``PatchEmbed`` / ``resample_abs_pos_embed`` (the tests compare both against timm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed", "resample_abs_pos_embed"]


def _hw(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or (height, width); got {value!r}")
    return int(value[0]), int(value[1])


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> ``width`` features (one strided convolution).

    Args:
        img_size: the image size the tower is built for (``grid_size`` and ``num_patches``).
        patch_size: patch side (or ``(h, w)``).
        in_chans: image channels.
        embed_dim: output width ``D``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.patch_size = _hw(patch_size, "patch_size")
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.set_input_size(img_size)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Record another image size (the convolution itself runs on any multiple of the patch)."""
        self.img_size = _hw(img_size, "img_size")
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``[B, C, H, W]`` (``H``, ``W`` multiples of the patch) -> ``[B, N, D]``,
        patches in row-major order."""
        h, w = images.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(
                f"PatchEmbed: image size {h}x{w} is not a multiple of the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}"
            )
        return self.proj(images).flatten(2).transpose(1, 2)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int] | list[int],
    old_size: tuple[int, int] | list[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize a ``[1, prefix + H*W, D]`` position embedding to the grid ``new_size``.

    The patch part is viewed as an ``H x W`` image of ``D`` channels and interpolated
    (bicubic, antialiased when shrinking, ``align_corners=False``) in float32; the prefix
    tokens (CLS) are kept as they are. ``old_size`` defaults to the square grid.

    Returns:
        ``[1, prefix + new_h * new_w, D]`` in the input dtype.
    """
    new_h, new_w = _hw(list(new_size), "new_size")
    tokens = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"resample_abs_pos_embed: {tokens} patch positions are not a square grid; "
                "pass old_size=(h, w)"
            )
        old_size = (side, side)
    old_h, old_w = _hw(list(old_size), "old_size")
    if old_h * old_w != tokens:
        raise ValueError(
            f"resample_abs_pos_embed: old_size {old_h}x{old_w} does not match the {tokens} patch "
            f"positions of pos_embed {tuple(pos_embed.shape)}"
        )
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    image = grid.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    image = F.interpolate(
        image, size=(new_h, new_w), mode=interpolation, antialias=antialias, align_corners=False
    )
    grid = image.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
