"""Every loss of the official X-FM golden outputs, computed with the xfm objectives.

:func:`golden_losses` takes the tensors of a golden ``inputs.safetensors`` (official names;
hard negatives fixed by ``neg_image_idx`` / ``neg_text_idx``) and returns the loss entries of
``outputs.safetensors``. ``xfm check-official`` compares them with the official values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xfm.train.data.batches import ImageTextBatch, RegionBatch, TextBatch
from xfm.train.objectives.bbox import BBox, bbox_losses
from xfm.train.objectives.context import BatchContext
from xfm.train.objectives.itc import ITC
from xfm.train.objectives.itm import ITM
from xfm.train.objectives.mim import MIM
from xfm.train.objectives.mlm import FusionMLM, TextMLM

if TYPE_CHECKING:
    from xfm.fusion.model import XFM

__all__ = ["GOLDEN_LOSS_KEYS", "golden_batches", "golden_losses"]

#: The loss entries of a pretraining golden ``outputs.safetensors``, the ones
#: :func:`golden_losses` computes (``xfm check-official``, in xfm-tasks, compares them).
GOLDEN_LOSS_KEYS: tuple[str, ...] = (
    "loss_itc",
    "loss_itm",
    "loss_mim",
    "loss_mlm",
    "loss_text_mlm",
    "loss_bbox",
    "loss_giou",
    "loss_bbox_no_is_image",
    "loss_giou_no_is_image",
    "region_loss_itc",
    "region_loss_itm",
    "region_loss_mim",
    "region_loss_mlm",
)


def golden_batches(
    inputs: dict[str, torch.Tensor],
) -> tuple[ImageTextBatch, TextBatch, RegionBatch]:
    """The typed image-text, text and region batches of golden ``inputs`` (official names).

    ``B`` = rows of ``text_ids``; the region batch keeps the official layout: ``Bi`` images
    with ``idx_to_group_img`` as :attr:`RegionBatch.image_row`, the ``[B, 1+N]``
    ``region_image_atts`` and ``is_image``; the text batch carries the sparse
    ``masked_pos`` / ``masked_ids`` labels.
    """
    b = inputs["text_ids"].shape[0]
    common = {"index": torch.arange(b), "keys": [str(i) for i in range(b)]}
    caption = {
        "text_ids": inputs["text_ids"],
        "text_mask": inputs["text_atts"],
        "masked_ids": inputs["masked_text_ids"],
        "masked_pos": inputs["masked_pos"],
        "masked_labels": inputs["masked_ids"],
    }
    pair = ImageTextBatch(
        **common,
        **caption,
        image=inputs["image"],
        image_mask=inputs["image_mask"],
        image_index=torch.arange(b, device=inputs["image"].device),
    )
    text = TextBatch(
        **common,
        input_ids=inputs["text_ids"],
        attention_mask=inputs["text_atts"],
        mlm_input_ids=inputs["masked_text_ids"],
        masked_pos=inputs["masked_pos"],
        masked_labels=inputs["masked_ids"],
    )
    region = RegionBatch(
        **common,
        **caption,
        image=inputs["image"],
        image_row=inputs["idx_to_group_img"],
        region_patch_mask=inputs["region_image_atts"],
        box=inputs["target_bbox"],
        is_image=inputs["is_image"],
    )
    return pair, text, region


def golden_losses(model: XFM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official pretraining losses for golden ``inputs`` (see ``GOLDEN_LOSS_KEYS``).

    Runs the image-text step (ITC, ITM, fusion MLM, MIM), the text step (text MLM) and the
    region step (region ITC/ITM/fusion MLM with ``region_image_atts``, bbox L1/GIoU with and
    without ``is_image``; the official region step has no MIM, so ``region_loss_mim`` is 0).
    Call it on a model in ``eval()`` mode for exact values; it builds graphs, so wrap it in
    ``torch.no_grad()`` when only the values are needed.
    """
    model.clamp_temp()
    negatives = (inputs["neg_image_idx"].long(), inputs["neg_text_idx"].long())
    pair_batch, text_batch, region_batch = golden_batches(inputs)
    out: dict[str, torch.Tensor] = {}

    pair = BatchContext(model, "image_text", pair_batch, negatives=negatives)
    out["loss_itc"] = ITC(gather=False, id_aware=False)(pair)["itc"]
    out["loss_itm"] = ITM(id_aware=False)(pair)["itm"]
    out["loss_mlm"] = FusionMLM()(pair)["fusion_mlm"]
    out["loss_mim"] = MIM()(pair)["mim"]

    text = BatchContext(model, "text", text_batch)
    out["loss_text_mlm"] = TextMLM()(text)["text_mlm"]

    region = BatchContext(model, "region", region_batch, negatives=negatives)
    out["region_loss_itc"] = ITC(gather=False, id_aware=False)(region)["itc"]
    out["region_loss_itm"] = ITM(id_aware=False)(region)["itm"]
    out["region_loss_mlm"] = FusionMLM()(region)["fusion_mlm"]
    out["region_loss_mim"] = torch.zeros((), device=inputs["image"].device)
    boxes = BBox()(region)
    out["loss_bbox"], out["loss_giou"] = boxes["bbox"], boxes["giou"]
    l1, giou = bbox_losses(region.bbox_pred(), inputs["target_bbox"], None)
    out["loss_bbox_no_is_image"], out["loss_giou_no_is_image"] = l1, giou
    return out
