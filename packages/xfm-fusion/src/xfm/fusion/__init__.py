"""xfm.fusion: the fusion encoder, the composed X-FM model and its heads, official checkpoint import."""

from xfm.fusion.encoder import CrossAttentionFusionEncoder, FusionEncoderConfig
from xfm.fusion.model import (
    HEAD_FACTORIES,
    PRETRAIN_HEADS,
    XFM,
    XFMConfig,
    XFMEncoders,
    build_heads,
)
from xfm.fusion.official import (
    UNUSED_OFFICIAL,
    from_official,
    infer_official_config,
    to_official,
    xfm_config_from_golden,
)

__version__ = "0.2.0"

__all__ = [
    "HEAD_FACTORIES",
    "PRETRAIN_HEADS",
    "UNUSED_OFFICIAL",
    "XFM",
    "CrossAttentionFusionEncoder",
    "FusionEncoderConfig",
    "XFMConfig",
    "XFMEncoders",
    "build_heads",
    "from_official",
    "infer_official_config",
    "to_official",
    "xfm_config_from_golden",
]
