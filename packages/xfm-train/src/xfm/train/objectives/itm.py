"""Image-text matching (ITM) with in-batch hard negatives sampled from the ITC softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from xfm.train.objectives.base import Objective

if TYPE_CHECKING:
    from xfm.fusion.model import XFM
    from xfm.train.objectives.context import BatchContext

__all__ = ["ITM", "hard_negative_weights", "sample_hard_negatives"]


def hard_negative_weights(sim: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling weights ``[B, B]``: ``softmax(sim, 1) + 1e-5`` with the positives zeroed.

    The positives are the diagonal, or every pair with equal ``ids`` ``[B]``. A row with no
    admissible negative left (all pairs share its id) falls back to uniform weights over the
    other columns.
    """
    weights = torch.softmax(sim.float(), dim=1) + 1e-5
    b = sim.shape[0]
    if ids is None:
        positive = torch.eye(b, dtype=torch.bool, device=sim.device)
    else:
        ids = ids.view(-1)
        positive = ids[:, None] == ids[None, :]
    weights = weights.masked_fill(positive, 0.0)
    empty = weights.sum(dim=1) == 0
    if b > 1 and bool(empty.any()):
        uniform = (~torch.eye(b, dtype=torch.bool, device=sim.device)).float()
        weights = torch.where(empty[:, None], uniform, weights)
    return weights


@torch.no_grad()
def sample_hard_negatives(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative image per text and one hard negative text per image.

    Draws ``neg_image_idx[b] ~ w_t2i[b]`` and ``neg_text_idx[b] ~ w_i2t[b]`` with
    :func:`hard_negative_weights` of the local ITC similarities (one vectorised
    ``torch.multinomial`` each; deterministic given ``generator``).

    Returns:
        ``(neg_image_idx, neg_text_idx)``, each ``[B]`` int64.
    """
    sim_i2t = image_feat.float() @ text_feat.float().t() / temp.float()
    w_t2i = hard_negative_weights(sim_i2t.t(), ids)
    w_i2t = hard_negative_weights(sim_i2t, ids)
    if generator is not None and generator.device != w_t2i.device:
        w_t2i, w_i2t = w_t2i.to(generator.device), w_i2t.to(generator.device)
    neg_image = torch.multinomial(w_t2i, 1, generator=generator).view(-1)
    neg_text = torch.multinomial(w_i2t, 1, generator=generator).view(-1)
    return neg_image.to(image_feat.device), neg_text.to(image_feat.device)


class ITM(Objective):
    """ITM: B positives + B (text, hard negative image) + B (hard negative text, image).

    The fusion encoder runs three batched passes (positives, negative images, negative texts)
    over the per-image cross-attention keys/values computed once. Returns ``{"itm": loss}``.

    Args:
        id_aware: never draw a negative with the same sample id as the positive.
    """

    name: ClassVar[str] = "itm"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")

    def __init__(self, id_aware: bool = True) -> None:
        self.id_aware = id_aware

    def negatives(self, model: XFM, ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed negatives of the context, or sampled ones."""
        if ctx.negatives is not None:
            return ctx.negatives[0].long(), ctx.negatives[1].long()
        image_feat, text_feat = ctx.itc_features()
        ids = ctx.ids if self.id_aware else None
        return sample_hard_negatives(image_feat, text_feat, model.temp, ids, ctx.generator)

    def __call__(self, model: XFM, ctx: BatchContext) -> dict[str, torch.Tensor]:
        text, mask = ctx.text(), ctx.text_mask
        b = text.shape[0]
        if b < 2:
            raise ValueError(f"ITM needs at least 2 pairs per batch to draw negatives; got {b}")
        neg_image, neg_text = self.negatives(model, ctx)
        kv = ctx.pair_kv()
        img_mask = ctx.pair_vision_mask()
        neg_kv = [(k[neg_image], v[neg_image]) for k, v in kv]
        neg_mask = None if img_mask is None else img_mask[neg_image]
        # three passes over the shared keys/values: no 3B copy of every layer's K/V
        fused = torch.cat(
            [
                model.fuse(text, mask, image_mask=img_mask, image_kv=kv)[:, :1],
                model.fuse(text, mask, image_mask=neg_mask, image_kv=neg_kv)[:, :1],
                model.fuse(text[neg_text], mask[neg_text], image_mask=img_mask, image_kv=kv)[:, :1],
            ]
        )
        logits = model.itm_logits(fused)
        labels = torch.zeros(3 * b, dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return {"itm": F.cross_entropy(logits.float(), labels)}
