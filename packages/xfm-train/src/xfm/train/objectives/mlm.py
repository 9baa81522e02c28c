"""Masked language modelling: on the fusion encoder (image-conditioned) and on the text encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from xfm.train.objectives.base import Objective, masked_cross_entropy

if TYPE_CHECKING:
    from xfm.fusion.model import XFM
    from xfm.train.objectives.context import BatchContext

__all__ = ["FusionMLM", "TextMLM", "gather_masked"]


def gather_masked(
    states: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States and labels of the valid masked slots only (sparse MLM head input).

    Args:
        states: ``[B, T, D]``.
        positions: ``[B, M]`` masked positions (padded slots arbitrary).
        labels: ``[B, M]`` labels, -100 at padded slots.

    Returns:
        ``([K, D], [K])`` for the ``K`` valid slots, in row-major slot order.
    """
    valid = labels != -100
    rows = torch.arange(states.shape[0], device=states.device)[:, None].expand_as(positions)
    return states[rows[valid], positions[valid].long()], labels[valid]


class FusionMLM(Objective):
    """Fusion MLM: masked caption -> language encoder -> fusion encoder with the image ->
    fusion MLM head at the masked positions (``{"fusion_mlm": loss}``).

    On region data the image is the region's states with the region mask (official).
    """

    name: ClassVar[str] = "fusion_mlm"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")

    def __call__(self, model: XFM, ctx: BatchContext) -> dict[str, torch.Tensor]:
        fused = model.fuse(
            ctx.masked_text(),
            ctx.text_mask,
            image_mask=ctx.pair_vision_mask(),
            image_kv=ctx.pair_kv(),
        )
        rows, labels = gather_masked(fused, ctx._need("masked_pos"), ctx._need("masked_labels"))
        logits = model.fusion_mlm_head(rows)
        return {"fusion_mlm": masked_cross_entropy(logits, labels)}


class TextMLM(Objective):
    """Text MLM on the language encoder alone with its tied MLM head (``{"text_mlm": loss}``).

    Uses dense labels (``mlm_labels`` ``[B, T]``, text source) or ``masked_pos`` /
    ``masked_labels`` ``[B, M]`` when given.
    """

    name: ClassVar[str] = "text_mlm"
    sources: ClassVar[tuple[str, ...]] = ("text",)

    def __call__(self, model: XFM, ctx: BatchContext) -> dict[str, torch.Tensor]:
        ids, mask = ctx._need("masked_ids"), ctx._need("text_mask")
        states = model.encode_text(ids, mask)
        if ctx.mlm_labels is not None:
            valid = ctx.mlm_labels != -100
            rows, labels = states[valid], ctx.mlm_labels[valid]
        else:
            rows, labels = gather_masked(
                states, ctx._need("masked_pos"), ctx._need("masked_labels")
            )
        logits = model.text_mlm_head(rows)
        return {"text_mlm": masked_cross_entropy(logits, labels)}
