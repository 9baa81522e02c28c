"""Plain ViT vision encoder (absolute position embedding), on the same blocks as BEiT-v2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from xfm.vision.config import VisionTowerConfig
from xfm.vision.tower import VisionTransformer

__all__ = ["ViT", "ViTConfig"]


@dataclass
class ViTConfig(VisionTowerConfig):
    """ViT-B/16 at 224px (timm ``vit_base_patch16_224`` layout; see :class:`VisionTowerConfig`)."""

    layer_scale_init: float | None = None
    qkv_bias: Literal["qkv", "qv", "none"] = "qkv"
    rel_pos: Literal["per_block", "shared", "none"] = "none"
    abs_pos: bool = True
    use_fc_norm: bool = False
    output: Literal["xfm", "cls"] = "cls"


class ViT(VisionTransformer):
    """ViT encoder: ``forward(images [B,3,H,W], mask [B,N] | None) -> [B, 1+N, D]``.

    ``output="cls"`` (default) returns every token after the final ``norm`` with the CLS token
    at position 0 (timm's ``forward_features``); ``output="xfm"`` gives the X-FM layout.
    """

    config_class: ClassVar[type[VisionTowerConfig]] = ViTConfig
