"""xfm.fusion: Fusion encoder, the composed X-FM model and its heads, official X-FM checkpoint import."""

__version__ = "0.1.0"
