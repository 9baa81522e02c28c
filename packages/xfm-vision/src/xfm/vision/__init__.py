"""xfm.vision: BEiT-v2 / ViT vision encoder, mask token, block masking, transforms, timm import.

Encoders (registered as ``vision_encoder`` ``beit_v2`` and ``vit``)::

    from xfm.vision import BEiTv2
    encoder = BEiTv2(image_size=224)                  # BEiT-v2 base/16, X-FM output layout
    states = encoder(images)                          # [B, 1+N, D]
    masked = encoder(images, mask=mask)               # mask [B, N] bool -> mask token

Also: :func:`load_timm` / :func:`load_official_vision` (and the public key rules used by the
fusion package), :func:`resize_rel_pos_table`, :class:`BlockMaskingGenerator`,
:func:`pretrain_transform` / :func:`eval_transform`.
"""

from xfm.core.lazy import lazy_exports
from xfm.vision.beit import BEiTv2, BEiTv2Config
from xfm.vision.config import VisionTowerConfig
from xfm.vision.convert import (
    OFFICIAL_VISION_PREFIX,
    beit_rules,
    fit_rules,
    load_official_vision,
    load_timm,
    official_vision_key_mapper,
    timm_key_mapper,
    timm_vit_rules,
)
from xfm.vision.masking import BlockMaskingGenerator, MaskBlock
from xfm.vision.rel_pos import (
    RelativePositionBias,
    geometric_offsets,
    num_relative_distances,
    relative_position_index,
    resize_rel_pos_table,
)
from xfm.vision.tower import VisionBlock, VisionTransformer
from xfm.vision.vit import ViT, ViTConfig

__version__ = "0.2.0"

# The image transforms need torchvision (~100 MB resident, a second of start-up): imported on
# first use, so that building or running an encoder does not pay for it.
_LAZY = {
    "NORMALIZATIONS": "xfm.vision.transforms",
    "apply_seeded": "xfm.vision.transforms",
    "eval_transform": "xfm.vision.transforms",
    "normalization": "xfm.vision.transforms",
    "pretrain_transform": "xfm.vision.transforms",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = [
    "NORMALIZATIONS",
    "OFFICIAL_VISION_PREFIX",
    "BEiTv2",
    "BEiTv2Config",
    "BlockMaskingGenerator",
    "MaskBlock",
    "RelativePositionBias",
    "ViT",
    "ViTConfig",
    "VisionBlock",
    "VisionTowerConfig",
    "VisionTransformer",
    "apply_seeded",
    "beit_rules",
    "eval_transform",
    "fit_rules",
    "geometric_offsets",
    "load_official_vision",
    "load_timm",
    "normalization",
    "num_relative_distances",
    "official_vision_key_mapper",
    "pretrain_transform",
    "relative_position_index",
    "resize_rel_pos_table",
    "timm_key_mapper",
    "timm_vit_rules",
]
