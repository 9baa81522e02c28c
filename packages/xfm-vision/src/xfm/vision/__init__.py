"""xfm.vision: BEiT-v2 / ViT vision encoder, mask token, block masking, transforms, timm import."""

__version__ = "0.1.0"
