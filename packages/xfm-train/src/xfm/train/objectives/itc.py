"""Image-text contrastive loss (ITC), all-gathered over ranks, optionally sample-id aware."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from xfm.train.distributed import all_gather_no_grad, all_gather_with_grad
from xfm.train.objectives.base import Objective, Stage

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["ITC", "itc_loss"]


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    ids: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE of ``image_feat @ text_feat.T / temp``.

    Args:
        image_feat, text_feat: ``[B, E]`` L2-normalised features of the local pairs.
        temp: scalar temperature.
        ids: ``[B]`` sample ids; all pairs with equal ids are positives (targets spread
            uniformly over them). ``None``: only the diagonal.
        gather: all-gather the features (and ids) over ranks first; the gradient flows to
            the local shard. Every rank then computes the loss of the union batch.

    Returns:
        Scalar loss: mean of the image-to-text and text-to-image cross-entropies.
    """
    if image_feat.shape != text_feat.shape:
        raise ValueError(
            f"ITC needs image and text features of the same shape [B, E]; got "
            f"{tuple(image_feat.shape)} and {tuple(text_feat.shape)}"
        )
    if gather:
        image_feat = all_gather_with_grad(image_feat)
        text_feat = all_gather_with_grad(text_feat)
        if ids is not None:
            ids = torch.cat(all_gather_no_grad(ids))
    sim_i2t = (image_feat @ text_feat.t()).float() / temp.float()
    if ids is None:
        labels = torch.arange(sim_i2t.shape[0], device=sim_i2t.device)
        return (F.cross_entropy(sim_i2t, labels) + F.cross_entropy(sim_i2t.t(), labels)) / 2
    ids = ids.view(-1, 1)
    pos = (ids == ids.t()).float()
    targets = pos / pos.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(sim_i2t.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


class ITC(Objective):
    """ITC on image-text pairs, or on region features for region data (``{"itc": loss}``).

    Args:
        gather: all-gather features over ranks (official behaviour).
        id_aware: treat pairs with the same sample id (``image_index``) as positives.
    """

    name: ClassVar[str] = "itc"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")
    losses: ClassVar[tuple[str, ...]] = ("itc",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __init__(self, gather: bool = True, id_aware: bool = True) -> None:
        self.gather = gather
        self.id_aware = id_aware

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        image_feat, text_feat = ctx.itc_features()
        ids = ctx.sample_ids if self.id_aware else None
        return {"itc": itc_loss(image_feat, text_feat, ctx.temp, ids, self.gather)}
