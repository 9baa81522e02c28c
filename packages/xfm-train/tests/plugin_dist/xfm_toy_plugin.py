"""A throwaway xfm plug-in distribution (installed by ``test_plugin_dist.py``).

It adds, through entry points only (see ``pyproject.toml`` next to it):

* ``vision_encoder`` ``toy_patches``: a one-layer patch encoder whose states are scaled by a
  parameter named ``toy_marker`` (so the exported weights show that it was built and trained);
* ``data_source`` ``video_text``: clips of ``F`` frames (an ``ndarray:uint8`` column
  ``[F, H, W, 3]``) with a caption, processed into the mean frame and the caption's tokens;
* ``objective`` ``video_itc``: contrastive loss between clips and captions (``video_itc``).

:func:`write_demo` writes MDS shards of the source with xfm's own writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xfm.train.data.batches import Batch
from xfm.train.data.schemas import Schema
from xfm.train.data.sources import DataSource
from xfm.train.data.transforms import SampleProcessor
from xfm.train.objectives.base import Objective, Stage
from xfm.train.objectives.itc import itc_loss

# ------------------------------------------------------------------------------ vision encoder


@dataclass
class ToyPatchesConfig:
    """Options of :class:`ToyPatches` (checked by ``xfm pretrain`` when the config loads)."""

    width: int = 16
    image_size: int = 16
    patch_size: int = 8


class ToyPatches(nn.Module):
    """Patch embedding + CLS + LayerNorm: ``[B, 3, H, W]`` -> ``[B, 1+N, width]``."""

    config_class = ToyPatchesConfig

    def __init__(self, width: int = 16, image_size: int = 16, patch_size: int = 8) -> None:
        super().__init__()
        self.config = ToyPatchesConfig(width, image_size, patch_size)
        self.width = width
        self.embed = nn.Conv2d(3, width, patch_size, patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.toy_marker = nn.Parameter(torch.ones(width))
        self.norm = nn.LayerNorm(width)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` ``[B, 3, H, W]``, ``mask`` ``[B, N]`` (True: masked) -> ``[B, 1+N, D]``."""
        x = self.embed(image).flatten(2).transpose(1, 2)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.expand_as(x), x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(x) * self.toy_marker


# ------------------------------------------------------------------------------- data source


@dataclass
class VideoTextBatch(Batch):
    """Clips and captions.

    Attributes:
        image: ``[B, 3, S, S]`` the mean frame of each clip.
        text_ids, text_mask: ``[B, T]`` caption tokens and attention mask.
        num_frames: ``[B]`` frames per clip.
    """

    image: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3, 0, 0))
    text_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    text_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    num_frames: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


class VideoTextProcessor(SampleProcessor):
    """A ``video_text`` sample -> mean frame ``[3, S, S]`` and caption ids ``[T]``."""

    source = "video_text"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        self.check_columns(raw)
        frames = torch.from_numpy(np.array(raw["frames"], dtype=np.float32)) / 255.0
        size = self.config.image_size
        mean = frames.mean(0).permute(2, 0, 1)[None]
        image = F.interpolate(mean, size=(size, size), mode="bilinear", align_corners=False)[0]
        ids = self.encode(raw["caption"], self.config.max_caption_len)
        return {
            "index": sample_id,
            "key": raw["id"],
            "image": (image - 0.5) / 0.25,
            "text_ids": ids,
            "text_mask": torch.ones_like(ids),
            "num_frames": int(frames.shape[0]),
        }


VIDEO_TEXT = DataSource(
    "video_text",
    Schema(
        "video_text",
        {"id": "str", "frames": "ndarray:uint8", "caption": "str"},
        {"id": (str,), "frames": (np.ndarray,), "caption": (str,)},
        non_empty=("caption",),
    ),
    VideoTextProcessor,
    VideoTextBatch,
    objectives={"video_itc": 1.0},
    description="clips of frames with a caption (plug-in)",
)

# --------------------------------------------------------------------------------- objective


class VideoITC(Objective):
    """Contrastive loss between clip and caption features (``{"video_itc": loss}``)."""

    name: ClassVar[str] = "video_itc"
    sources: ClassVar[tuple[str, ...]] = ("video_text",)
    losses: ClassVar[tuple[str, ...]] = ("video_itc",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, ctx: Any) -> dict[str, torch.Tensor]:
        image_feat, text_feat = ctx.itc_features()
        return {"video_itc": self.scale * itc_loss(image_feat, text_feat, ctx.temp, gather=False)}


# ---------------------------------------------------------------------------------- demo data

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}


def demo_captions() -> list[str]:
    """The captions of :func:`write_demo`'s clips (also the tokenizer's training text)."""
    return [f"a {name} light blinking" for name in COLORS] + [
        f"a {name} light fading" for name in COLORS
    ]


def write_demo(out: str, num: int = 24, size: int = 16, frames: int = 3) -> int:
    """Write ``num`` clips of a coloured square blinking or fading to MDS shards at ``out``."""
    from xfm.train.data import open_writer

    rng = np.random.default_rng(0)
    captions = demo_captions()
    with open_writer("video_text", out) as writer:
        for i in range(num):
            caption = captions[i % len(captions)]
            color = np.array(COLORS[caption.split()[1]], dtype=np.float32)
            levels = [1.0, 0.0, 1.0] if "blinking" in caption else [1.0, 0.6, 0.3]
            clip = np.stack(
                [
                    np.clip(
                        color * levels[f % 3] + rng.normal(0, 10, (size, size, 3)), 0, 255
                    ).astype(np.uint8)
                    for f in range(frames)
                ]
            )
            writer.write_sample({"id": f"clip-{i:04d}", "frames": clip, "caption": caption})
    return writer.summary.written
