"""Box regression from the fusion CLS of (full image, region caption): L1 + GIoU."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from xfm.train.objectives.base import Objective, Stage

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["BBox", "bbox_losses"]


def bbox_losses(
    pred: torch.Tensor, target: torch.Tensor, is_image: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official X-FM box losses of ``(cx, cy, w, h)`` boxes ``[B, 4]`` in [0, 1].

    Returns ``(l1, giou)``: the L1 distance summed over coordinates and ``1 - GIoU``, both
    summed over the samples and divided by their number; rows with ``is_image`` ``[B]`` = 1
    (text about the whole image) are excluded. Degenerate boxes (negative size) give a GIoU
    loss of 0, as in the official code.
    """
    if pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(
            f"boxes must be [B, 4] (cx, cy, w, h); got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    # torchvision is imported here, not at module level: importing it costs ~100 MB of resident
    # memory, which every pretraining process would pay even without region data.
    from torchvision.ops import box_convert, generalized_box_iou_loss

    pred, target = pred.float(), target.float()
    l1 = (pred - target).abs()
    a = box_convert(pred, "cxcywh", "xyxy")
    b = box_convert(target, "cxcywh", "xyxy")
    if bool((a[:, 2:] < a[:, :2]).any() or (b[:, 2:] < b[:, :2]).any()):
        giou = pred.new_zeros(pred.shape[0])
    else:
        giou = generalized_box_iou_loss(a, b, reduction="none")
    if is_image is None:
        n = torch.tensor(float(pred.shape[0]), device=pred.device)
    else:
        keep = 1.0 - is_image.float()
        n = keep.sum()
        l1 = l1 * keep[:, None]
        giou = giou * keep
    return l1.sum() / n, giou.sum() / n


class BBox(Objective):
    """Predict the region box from (full image, region caption); ``{"bbox", "giou"}``.

    The caption states are detached under stop gradient (official ``detach_text``).
    """

    name: ClassVar[str] = "bbox"
    sources: ClassVar[tuple[str, ...]] = ("region",)
    losses: ClassVar[tuple[str, ...]] = ("bbox", "giou")
    stage: ClassVar[Stage] = Stage.MAIN

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        batch = ctx.batch
        l1, giou = bbox_losses(ctx.bbox_pred(), batch.box, batch.is_image)
        return {"bbox": l1, "giou": giou}
