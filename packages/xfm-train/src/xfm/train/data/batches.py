"""Typed batches of the four built-in sources and the collate function that builds them.

A plug-in source (:mod:`xfm.train.data.sources`) declares its own :class:`Batch` subclass and is
collated by the same :func:`collate_as` (token fields padded, tensors stacked).

Every batch carries ``index`` (``[B]`` global sample ids in the dataset, for tracing and
exact-resume checks), ``keys`` (the stored sample ``id`` strings), and the bad samples dropped
from it (``skipped``), plus ``num_raw`` = kept + skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from xfm.train.data.errors import BadSample

__all__ = [
    "TOKEN_PADDING",
    "Batch",
    "ImageBatch",
    "ImageTextBatch",
    "RegionBatch",
    "TextBatch",
    "collate",
    "collate_as",
    "pad_sequences",
]


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: int) -> torch.Tensor:
    """Right-pad 1-D tensors ``[T_i]`` to ``[B, max T_i]`` with ``pad_value``."""
    if not seqs:
        return torch.zeros(0, 0, dtype=torch.long)
    width = max(int(s.shape[0]) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


@dataclass
class Batch:
    """Fields shared by all batches.

    Attributes:
        index: ``[B]`` int64 global sample ids.
        keys: the ``B`` stored sample ids.
        skipped: bad samples dropped from this batch.
        num_raw: samples consumed to build this batch (``B + len(skipped)``).
    """

    index: torch.Tensor
    keys: list[str]
    skipped: list[BadSample] = field(default_factory=list)
    num_raw: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        return type(self)(**values)

    def pin_memory(self) -> Batch:
        """Pin every tensor (called by ``DataLoader(pin_memory=True)``)."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.pin_memory() if torch.is_tensor(v) else v
        return type(self)(**values)


@dataclass
class TextBatch(Batch):
    """Plain text for text MLM.

    Attributes:
        input_ids: ``[B, T]`` token ids (``<s> ... </s>``, padded).
        attention_mask: ``[B, T]`` 1 for tokens, 0 for padding.
        mlm_input_ids: ``[B, T]`` the ids after whole-word masking.
        mlm_labels: ``[B, T]`` the original id at masked positions, -100 elsewhere.
        masked_pos, masked_labels: optional sparse labels instead of ``mlm_labels`` (the official
            layout): ``[B, M]`` masked positions (padded with 0) and their original ids (padded
            with -100). Text MLM reads these when set.
    """

    input_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    attention_mask: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, 0, dtype=torch.long)
    )
    mlm_input_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    mlm_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    masked_pos: torch.Tensor | None = None
    masked_labels: torch.Tensor | None = None


@dataclass
class _ImageFields(Batch):
    """Attributes:
    image: ``[B, 3, H, W]`` float32 normalised images.
    image_mask: ``[B, N]`` bool, True at the patches masked for MIM (``N`` patches).
    """

    image: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, 0, 0))
    image_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))


@dataclass
class _CaptionFields(_ImageFields):
    """Attributes:
    text_ids: ``[B, T]`` caption token ids; ``text_mask``: ``[B, T]`` attention mask.
    masked_ids: ``[B, T]`` caption ids after span masking (fusion MLM input).
    masked_pos: ``[B, M]`` positions of the masked tokens, padded with 0.
    masked_labels: ``[B, M]`` original ids at ``masked_pos``, padded with -100.
    """

    text_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    text_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    masked_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    masked_pos: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    masked_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))


@dataclass
class ImageTextBatch(_CaptionFields):
    """(image, caption) pairs for ITC, ITM, fusion MLM and MIM (see the parent fields).

    Attributes:
        image_index: ``[B]`` int64 id of the image (equal for captions of one image; for
            id-aware ITC).
    """

    image_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


@dataclass
class RegionBatch(_CaptionFields):
    """(image, region box, region caption) for region ITC/ITM/MLM and bbox regression.

    Attributes:
        box: ``[B, 4]`` float32 ``(cx, cy, w, h)`` of the region in [0, 1] of the image.
        region_patch_mask: ``[B, N]`` bool, True at patches that overlap the box (or ``[B, 1+N]``
            with column 0 for the CLS position, the official ``region_image_atts``).
        image_index: ``[B]`` int64 id of the image.
        image_row: optional ``[B]`` int64 row of ``image`` that each region belongs to, when
            several regions share one image (``image`` then holds ``Bi <= B`` images; the
            official ``idx_to_group_img``). ``None``: row ``b`` for region ``b``.
        is_image: optional ``[B]`` 1 where the caption describes the whole image (no box loss).
    """

    box: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    region_patch_mask: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool)
    )
    image_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    image_row: torch.Tensor | None = None
    is_image: torch.Tensor | None = None


@dataclass
class ImageBatch(_ImageFields):
    """Images for MIM.

    Attributes:
        label: ``[B]`` int64 class label, -1 when unlabeled.
    """

    label: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


BATCH_TYPES: dict[str, type[Batch]] = {
    "text": TextBatch,
    "image_text": ImageTextBatch,
    "region": RegionBatch,
    "image": ImageBatch,
}
"""The batch type of each built-in source (every source's: its ``DataSource.batch_type``)."""

TOKEN_PADDING: dict[str, int | str] = {
    "input_ids": "pad_id",
    "attention_mask": 0,
    "mlm_input_ids": "pad_id",
    "mlm_labels": -100,
    "text_ids": "pad_id",
    "text_mask": 0,
    "masked_ids": "pad_id",
    "masked_pos": 0,
    "masked_labels": -100,
}
"""The variable-length 1-D per-sample fields and their padding value (``"pad_id"``: the
tokenizer's padding id); :func:`collate_as` stacks every other tensor field and turns Python
values into a tensor."""


def collate_as(
    batch_type: type[Batch],
    samples: Sequence[Any],
    pad_id: int = 0,
    padding: Mapping[str, int | str] = TOKEN_PADDING,
) -> Batch:
    """Build a ``batch_type`` from processed samples (dicts) and :class:`BadSample` s.

    Per-sample dicts hold ``index`` (int), ``key`` (str) and one value per field of
    ``batch_type``: the fields named in ``padding`` are 1-D tensors ``[T_i]`` right-padded to
    ``[B, max T_i]``; other tensors are stacked (``[B, ...]``); Python numbers become a ``[B]``
    tensor.
    """
    kept = [s for s in samples if not isinstance(s, BadSample)]
    skipped = [s for s in samples if isinstance(s, BadSample)]
    values: dict[str, Any] = {
        "index": torch.tensor([int(s["index"]) for s in kept], dtype=torch.long),
        "keys": [str(s["key"]) for s in kept],
        "skipped": skipped,
        "num_raw": len(samples),
    }
    if kept:
        for name in kept[0]:
            if name in ("index", "key"):
                continue
            items = [s[name] for s in kept]
            if name in padding:
                pad = padding[name]
                values[name] = pad_sequences(items, pad_id if pad == "pad_id" else int(pad))
            elif torch.is_tensor(items[0]):
                values[name] = torch.stack(items)
            else:
                values[name] = torch.tensor(items)
    return batch_type(**values)


def collate(source: str, samples: Sequence[Any], pad_id: int = 0) -> Batch:
    """The batch of registered data source ``source`` (built-in or plug-in) from processed
    samples: its ``DataSource.collate`` (by default :func:`collate_as` its batch type)."""
    from xfm.core.registry import get  # the registry, not xfm.train.data.sources: no cycle

    return get("data_source", source).collate(samples, pad_id)
