"""The embedded synthetic "shapes world" dataset (no downloads needed).

``build_synthetic(out, SynthConfig(...))`` or ``xfm data synth --out DIR``.
"""

from xfm.train.data.synth.build import SPLITS, SynthConfig, build_synthetic, text_corpus
from xfm.train.data.synth.render import render
from xfm.train.data.synth.world import (
    COLORS,
    SHAPES,
    Scene,
    Shape,
    captions,
    class_names,
    region_caption,
    relation,
    sample_scene,
)

__all__ = [
    "COLORS",
    "SHAPES",
    "SPLITS",
    "Scene",
    "Shape",
    "SynthConfig",
    "build_synthetic",
    "captions",
    "class_names",
    "region_caption",
    "relation",
    "render",
    "sample_scene",
    "text_corpus",
]
