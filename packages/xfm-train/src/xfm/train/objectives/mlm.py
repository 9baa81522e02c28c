"""Masked language modelling: on the fusion encoder (image-conditioned) and on the text encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from xfm.train.objectives.base import Objective, Stage, gather_masked, mlm_loss

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["FusionMLM", "TextMLM", "gather_masked"]


class FusionMLM(Objective):
    """Fusion MLM: masked caption -> language encoder -> fusion encoder with the image ->
    fusion MLM head at the masked positions (``{"fusion_mlm": loss}``).

    On region data the image is the region's states with the region mask (official).
    """

    name: ClassVar[str] = "fusion_mlm"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")
    losses: ClassVar[tuple[str, ...]] = ("fusion_mlm",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        rows, labels = ctx.fusion_mlm_rows()
        return {"fusion_mlm": mlm_loss(ctx.model.fusion_mlm_head, rows, labels)}


class TextMLM(Objective):
    """Text MLM on the language encoder alone with its tied MLM head (``{"text_mlm": loss}``).

    Uses the dense labels of the text batch (``mlm_labels`` ``[B, T]``) or its sparse
    ``masked_pos`` / ``masked_labels`` ``[B, M]`` when given (official layout).
    """

    name: ClassVar[str] = "text_mlm"
    sources: ClassVar[tuple[str, ...]] = ("text",)
    losses: ClassVar[tuple[str, ...]] = ("text_mlm",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        rows, labels = ctx.text_mlm_rows()
        return {"text_mlm": mlm_loss(ctx.model.text_mlm_head, rows, labels)}
