"""Masked image modelling with vision-language guidance (MIM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from xfm.train.objectives.base import Objective, Stage

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["MIM", "mim_loss"]


def mim_loss(masked: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``MSE(masked[:,1:][mask], target[:,1:][mask]) + MSE(masked[:,0], target[:,0])``.

    Args:
        masked: ``[B, 1+N, D]`` vision output of the masked images.
        target: ``[B, 1+N, D]`` regression target (no gradient).
        mask: ``[B, N]`` bool, True at masked patches.
    """
    if masked.shape != target.shape or mask.shape != (*masked.shape[:1], masked.shape[1] - 1):
        raise ValueError(
            f"MIM needs masked/target [B, 1+N, D] and mask [B, N]; got {tuple(masked.shape)}, "
            f"{tuple(target.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    patches = masked[:, 1:][mask].float()
    loss = F.mse_loss(masked[:, 0].float(), target[:, 0].float())
    if patches.numel():
        loss = loss + F.mse_loss(patches, target[:, 1:][mask].float())
    return loss


class MIM(Objective):
    """MIM: the masked image's outputs at masked patches and position 0 regress to the
    target (the model's own unmasked outputs, detached, with vision guidance; a frozen
    teacher otherwise). Returns ``{"mim": loss}``.

    Runs in :attr:`Stage.REUSE`: its vision-guided target is the main stage's unmasked vision
    output, detached.
    """

    name: ClassVar[str] = "mim"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "image")
    losses: ClassVar[tuple[str, ...]] = ("mim",)
    stage: ClassVar[Stage] = Stage.REUSE

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        target = ctx.mim_target()
        return {"mim": mim_loss(ctx.masked_vision(), target, ctx.batch.image_mask)}
