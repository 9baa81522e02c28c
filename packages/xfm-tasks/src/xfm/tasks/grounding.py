"""Referring-expression grounding (RefCOCO+, bbox variant).

The model (official ``XFMForGrounding``) fuses the expression with the full image and
predicts ``sigmoid(bbox_head(fusion CLS))`` = normalised ``(cx, cy, w, h)``. Loss: L1 summed
over coordinates / B + (1 - GIoU) summed / B (the pretraining box losses of
:mod:`xfm.train.objectives.bbox`). Metric: accuracy = official IoU >= 0.5 after converting the
prediction to pixels of the original image (:func:`xfm.tasks.metrics.grounding_accuracy`).

Annotation JSON (RefCOCO+ as distributed for X-VLM / X-FM, also the synthetic set):
``{"image", "text", "bbox": [x, y, w, h] (pixels of the original image), "ref_id"?}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.fusion.model import XFMConfig
from xfm.tasks.base import Task, TaskData, TaskDataSection, TaskModel, collect_outputs
from xfm.tasks.base_data import ImageReader, read_annotations, require, tokenize
from xfm.tasks.metrics import grounding_accuracy, official_iou_xywh, pred_to_pixels
from xfm.train.objectives import bbox_losses

__all__ = ["GroundingModel", "GroundingSet", "GroundingTask", "normalised_target"]


class GroundingModel(TaskModel):
    """``XFMForGrounding``: encoders + ``bbox_head`` (MLP Dt -> 4, sigmoid)."""

    keep_heads: ClassVar[tuple[str, ...]] = ("fusion_mlm_head", "bbox_head")
    task_name: ClassVar[str] = "grounding"

    def forward(
        self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Predicted boxes ``[B, 4]`` = normalised ``(cx, cy, w, h)``."""
        text = self.encode_text(text_ids, text_mask)
        return self.predict_bbox(self.fuse(text, text_mask, self.encode_image(image)))


def normalised_target(box_xywh: list[float], width: int, height: int) -> list[float]:
    """Pixel ``[x, y, w, h]`` -> normalised ``(cx, cy, w, h)``."""
    x, y, w, h = (float(v) for v in box_xywh)
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


class GroundingSet(torch.utils.data.Dataset):
    """Items ``(image, text, target (cx,cy,w,h) normalised, gt box xywh px, (W, H))``."""

    def __init__(self, items: list[dict[str, Any]], reader: ImageReader) -> None:
        self.reader = reader
        self.items = []
        for n, item in enumerate(items):
            where = f"grounding annotation #{n}"
            require(item, ("image", "text", "bbox"), where)
            box = item["bbox"]
            if len(box) != 4 or float(box[2]) <= 0 or float(box[3]) <= 0:
                raise ValueError(f"{where}: bbox must be [x, y, w, h] with w, h > 0; got {box!r}")
            self.items.append((item["image"], item["text"], [float(v) for v in box]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(
        self, i: int
    ) -> tuple[torch.Tensor, str, torch.Tensor, torch.Tensor, torch.Tensor]:
        path, text, box = self.items[i]
        image, (w, h) = self.reader(path)
        target = torch.tensor(normalised_target(box, w, h))
        return image, text, target, torch.tensor(box, dtype=torch.float64), torch.tensor([w, h])


def _collate(tokenizer: Any, max_tokens: int) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
    def collate(items: list[Any]) -> dict[str, torch.Tensor]:
        ids, mask = tokenize(tokenizer, [t for _, t, *_ in items], max_tokens)
        return {
            "image": torch.stack([it[0] for it in items]),
            "text_ids": ids,
            "text_mask": mask,
            "target": torch.stack([it[2] for it in items]),
            "gt_xywh": torch.stack([it[3] for it in items]),
            "size": torch.stack([it[4] for it in items]),
        }

    return collate


class GroundingTask(Task):
    """RefCOCO+ grounding. Options: ``l1_weight``, ``giou_weight``."""

    name: ClassVar[str] = "grounding"
    metric: ClassVar[str] = "accuracy"
    official_layout: ClassVar[str | None] = "grounding_bbox"
    default_options: ClassVar[dict[str, Any]] = {"l1_weight": 1.0, "giou_weight": 1.0}

    def build_model(self, model_config: Mapping[str, Any] | XFMConfig) -> GroundingModel:
        return GroundingModel(model_config)

    def _data(self, data: TaskDataSection, path: str, what: str, tokenizer: Any) -> TaskData:
        items = read_annotations(data.expand(path), what)
        reader = ImageReader(data.expand(data.root), data.image_size, augment=False)
        return TaskData(GroundingSet(items, reader), _collate(tokenizer, data.max_tokens))

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, "grounding train", tokenizer)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        return self._data(data, data.eval[split], f"grounding {split}", tokenizer)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        pred = model(batch["image"], batch["text_ids"], batch["text_mask"])
        l1, giou = bbox_losses(pred, batch["target"])
        total = self.options["l1_weight"] * l1 + self.options["giou_weight"] * giou
        return {"loss": total, "l1": l1, "giou": giou}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        device = device or next(model.parameters()).device

        def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            pred = model(batch["image"], batch["text_ids"], batch["text_mask"]).float()
            return {"pred": pred, "gt": batch["gt_xywh"], "size": batch["size"]}

        out = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device,
            autocast=autocast,
            progress=progress,
            desc="grounding eval",
            shard=True,
        )
        pred, gt, size = out["pred"], out["gt"], out["size"]
        iou = official_iou_xywh(gt, pred_to_pixels(pred, size))
        # baseline: always predict the mean training-free box (the whole image)
        whole = torch.tensor([[0.5, 0.5, 1.0, 1.0]], device=device).expand_as(pred)
        return {
            "accuracy": grounding_accuracy(pred, gt, size),
            "mean_iou": 100.0 * float(iou.mean()),
            "whole_image_accuracy": grounding_accuracy(whole, gt, size),
            "samples": float(len(pred)),
        }
