"""BEiT-v2 vision encoder, the X-FM vision tower.

CLS token, no absolute position embedding, a relative position bias table in every block (or one
shared table), q/v biases without a k bias, LayerScale (0.1), stochastic depth, a learnable mask
token, and the official X-FM output: the CLS output is dropped, the patch tokens go through
``fc_norm`` and position 0 is their mean. Checkpoint importers: :mod:`xfm.vision.convert`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from xfm.vision.config import VisionTowerConfig
from xfm.vision.tower import VisionTransformer

__all__ = ["BEiTv2", "BEiTv2Config"]


@dataclass
class BEiTv2Config(VisionTowerConfig):
    """BEiT-v2 base/16 at 224px as X-FM uses it (see :class:`VisionTowerConfig` for fields)."""

    layer_scale_init: float | None = 0.1
    drop_path_rate: float = 0.1
    qkv_bias: Literal["qkv", "qv", "none"] = "qv"
    rel_pos: Literal["per_block", "shared", "none"] = "per_block"
    abs_pos: bool = False
    use_fc_norm: bool = True
    output: Literal["xfm", "cls"] = "xfm"


class BEiTv2(VisionTransformer):
    """BEiT-v2 encoder: ``forward(images [B,3,H,W], mask [B,N] | None) -> [B, 1+N, D]``.

    Built as ``BEiTv2()`` (base/16, 224px), ``BEiTv2(BEiTv2Config(...))`` or with overrides,
    e.g. ``BEiTv2(image_size=32, patch_size=8, width=48, layers=2, heads=4)``; also
    ``xfm.core.registry.create("vision_encoder", "beit_v2", ...)``.
    """

    config_class: ClassVar[type[VisionTowerConfig]] = BEiTv2Config
    rescale_residual_init: ClassVar[bool] = True
