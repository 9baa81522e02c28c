"""Data helpers shared by the task datasets: annotation files, images, texts, synthetic data.

The task datasets read the official annotation JSON formats directly (images relative to a
root folder); image decoding and normalisation come from :mod:`xfm.train.data` (imported on
first use: it pulls in the streaming library, which is slow to import).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ImageReader",
    "image_source",
    "read_annotations",
    "read_task_items",
    "tokenize",
]


def read_annotations(path: str | Path, what: str = "annotations") -> list[dict[str, Any]]:
    """A JSON list of annotation entries; clear errors for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(p)!r} does not exist")
    try:
        items = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {str(p)!r} is not valid JSON: {err}") from err
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        got = type(items).__name__
        raise ValueError(f"{what} file {str(p)!r} must hold a JSON list of objects; got {got}")
    return items


def read_task_items(path: str | Path, kind: str, what: str) -> Any:
    """The entries of a task annotation file: a JSON list, or a task MDS folder read lazily
    (:class:`xfm.tasks.task_mds.MDSTable`, rows equal to the JSON entries)."""
    from xfm.tasks.task_mds import MDSTable, is_mds

    if is_mds(path):
        return MDSTable(path, kind, what)
    return read_annotations(path, what)


def image_source(item: dict[str, Any]) -> str | bytes:
    """What :class:`ImageReader` reads for an entry: its stored image bytes, else its path."""
    return item.get("image_bytes") or item["image"]


def require(item: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Raise ``ValueError`` naming the missing keys of an annotation entry."""
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(
            f"{where}: missing key(s) {missing}; expected {list(keys)}, got {sorted(item)}"
        )


class ImageReader:
    """Load an image file as a normalised ``[3, S, S]`` float tensor (bicubic resize).

    Args:
        root: folder the annotation paths are relative to.
        image_size: output side ``S``.
        augment: random resized crop (training).
    """

    def __init__(self, root: str | Path, image_size: int, augment: bool = False) -> None:
        from xfm.train.data.transforms import ImageProcessor, ProcessConfig

        self.root = Path(root)
        self.augment = augment
        self._proc = ImageProcessor(
            ProcessConfig(image_size=image_size, patch_size=1, mim=False, augment=augment)
        )

    def path(self, rel: str) -> Path:
        """Absolute path of an annotation image path."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def __call__(self, rel: str | bytes, seed: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
        """``([3, S, S] tensor, (width, height) of the original image)``; ``rel`` is a path
        relative to ``root`` or the encoded image itself (``image_bytes`` of task MDS)."""
        from xfm.train.data.images import read_image_file

        if isinstance(rel, bytes):
            from PIL import Image

            data, size = rel, Image.open(io.BytesIO(rel)).size
        else:
            data, size = read_image_file(self.path(rel))
        gen = torch.Generator().manual_seed(seed)
        return self._proc.image_tensor(data, gen, self.augment), size


def tokenize(
    tokenizer: Any, texts: list[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``[B, T]`` (padded to the longest, truncated)."""
    out = tokenizer(texts, max_tokens=max_tokens, padding="longest")
    return out.input_ids, out.attention_mask
