"""Drawing shapes-world scenes with PIL."""

from __future__ import annotations

from PIL import Image, ImageDraw

from xfm.train.data.synth.world import COLORS, Scene

__all__ = ["render"]

_SUPERSAMPLE = 2


def render(scene: Scene) -> Image.Image:
    """The RGB image of ``scene``, ``image_size x image_size`` pixels (anti-aliased)."""
    k = _SUPERSAMPLE
    side = scene.image_size * k
    bg = scene.background
    img = Image.new("RGB", (side, side), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        x, y, w, h = (v * k for v in s.box)
        fill = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse((x, y, x + w - 1, y + h - 1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(x + w / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=fill)
        else:
            raise ValueError(f"render: unknown shape {s.shape!r}")
    return img.resize((scene.image_size, scene.image_size), Image.Resampling.BOX)
