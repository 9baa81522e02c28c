"""NLVR2: is a statement true of a pair of images?

The model (official ``XFMForNLVR``) encodes the statement once, runs the fusion encoder on
(statement, left image) and (statement, right image) with full image attention, concatenates
the two fusion CLS vectors in image order and classifies with ``cls_head`` (an MLP, 2 classes).
Loss: cross-entropy; metric: accuracy on dev / test-P (official JSON:
``{"images": [left, right], "sentence", "label": "True" | "False"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.layers import MLPHead
from xfm.fusion.model import XFMConfig
from xfm.tasks.base import Task, TaskData, TaskDataSection, TaskModel, collect_outputs
from xfm.tasks.base_data import ImageReader, read_annotations, require, tokenize
from xfm.tasks.metrics import accuracy

__all__ = ["NLVRModel", "NLVRSet", "NLVRTask", "parse_label"]


class NLVRModel(TaskModel):
    """``XFMForNLVR``: encoders + ``cls_head`` = MLP(2 Dt -> 2) on the two pair vectors."""

    keep_heads: ClassVar[tuple[str, ...]] = ("fusion_mlm_head",)
    task_name: ClassVar[str] = "nlvr"

    def __init__(self, config: XFMConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.cls_head = MLPHead(2 * self.text_width, 2)

    def pair_states(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(text [B,T,Dt], vision [2B,1+N,Dv], fused with image0 [B,T,Dt], with image1)``.

        The vision encoder sees ``cat([image0, image1])``; both fusion passes run as one batch.
        """
        b = text_ids.shape[0]
        if image0.shape != image1.shape or image0.shape[0] != b:
            raise ValueError(
                f"NLVR needs image0/image1 [B,3,H,W] and text [B,T] with one B; got "
                f"{tuple(image0.shape)}, {tuple(image1.shape)}, {tuple(text_ids.shape)}"
            )
        text = self.encode_text(text_ids, text_mask)
        vision = self.encode_image(torch.cat([image0, image1]))
        fused = self.fuse(torch.cat([text, text]), torch.cat([text_mask, text_mask]), vision)
        return text, vision, fused[:b], fused[b:]

    def forward(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, 2]``."""
        _, _, f0, f1 = self.pair_states(image0, image1, text_ids, text_mask)
        return self.cls_head(torch.cat([f0[:, 0], f1[:, 0]], dim=-1))


def parse_label(value: Any, where: str) -> int:
    """``"True"``/``"False"`` (official), booleans or 0/1 -> 1/0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    raise ValueError(f"{where}: label must be 'True' or 'False'; got {value!r}")


class NLVRSet(torch.utils.data.Dataset):
    """Items ``(left image, right image, sentence, label)`` of an NLVR2 annotation list."""

    def __init__(self, items: list[dict[str, Any]], reader: ImageReader) -> None:
        self.reader = reader
        self.items = []
        for n, item in enumerate(items):
            where = f"NLVR2 annotation #{n}"
            require(item, ("images", "sentence", "label"), where)
            if not isinstance(item["images"], list) or len(item["images"]) != 2:
                raise ValueError(f"{where}: 'images' must list 2 paths; got {item['images']!r}")
            self.items.append(
                (*item["images"], item["sentence"], parse_label(item["label"], where))
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, int]:
        left, right, sentence, label = self.items[i]
        return (
            self.reader(left, seed=2 * i)[0],
            self.reader(right, seed=2 * i + 1)[0],
            sentence,
            label,
        )


def _collate(tokenizer: Any, max_tokens: int) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
    def collate(items: list[Any]) -> dict[str, torch.Tensor]:
        ids, mask = tokenize(tokenizer, [s for _, _, s, _ in items], max_tokens)
        return {
            "image0": torch.stack([a for a, _, _, _ in items]),
            "image1": torch.stack([b for _, b, _, _ in items]),
            "text_ids": ids,
            "text_mask": mask,
            "label": torch.tensor([y for *_, y in items], dtype=torch.long),
        }

    return collate


class NLVRTask(Task):
    """NLVR2 (no options)."""

    name: ClassVar[str] = "nlvr"
    metric: ClassVar[str] = "accuracy"
    official_layout: ClassVar[str | None] = "nlvr"
    default_options: ClassVar[dict[str, Any]] = {}

    def build_model(self, model_config: Mapping[str, Any] | XFMConfig) -> NLVRModel:
        return NLVRModel(model_config)

    def _data(
        self, data: TaskDataSection, path: str, what: str, augment: bool, tokenizer: Any
    ) -> TaskData:
        items = read_annotations(data.expand(path), what)
        reader = ImageReader(data.expand(data.root), data.image_size, augment)
        return TaskData(NLVRSet(items, reader), _collate(tokenizer, data.max_tokens))

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, "NLVR2 train", data.augment, tokenizer)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        return self._data(data, data.eval[split], f"NLVR2 {split}", False, tokenizer)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        logits = model(batch["image0"], batch["image1"], batch["text_ids"], batch["text_mask"])
        ce = F.cross_entropy(logits.float(), batch["label"])
        return {"loss": ce, "ce": ce}

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
        def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            logits = model(batch["image0"], batch["image1"], batch["text_ids"], batch["text_mask"])
            return {"pred": logits.argmax(-1), "label": batch["label"]}

        out = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device or next(model.parameters()).device,
            autocast=autocast,
            progress=progress,
            desc="NLVR2 eval",
            shard=True,
        )
        pred, label = out["pred"], out["label"]
        majority = float(max(label.float().mean(), 1 - label.float().mean())) * 100
        return {
            "accuracy": accuracy(pred, label),
            "majority": majority,
            "samples": float(len(label)),
        }
