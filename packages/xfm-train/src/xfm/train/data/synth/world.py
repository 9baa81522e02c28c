"""The "shapes world": scenes of coloured shapes and the language that describes them.

A :class:`Scene` holds one or two :class:`Shape` objects on a plain background. Everything here
is a pure function of a ``numpy.random.Generator``, so a dataset is reproducible from a seed.
Boxes are ``[x, y, w, h]`` in pixels of the rendered image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "Scene",
    "Shape",
    "captions",
    "class_names",
    "referring_expression",
    "region_caption",
    "relation",
    "sample_scene",
    "scene_key",
]

COLORS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (225, 195, 30),
    "purple": (145, 55, 185),
}
SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle")
SIZES: Final[dict[str, tuple[float, float]]] = {"small": (0.2, 0.26), "large": (0.36, 0.44)}
"""Side length of a shape's box as a fraction of the image side, per size word."""


@dataclass(frozen=True)
class Shape:
    """One shape: its words and its box ``[x, y, w, h]`` in pixels (square box)."""

    color: str
    shape: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """``(cx, cy)`` in pixels."""
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    @property
    def label(self) -> int:
        """Class index ``color_index * len(SHAPES) + shape_index`` (see :func:`class_names`)."""
        return list(COLORS).index(self.color) * len(SHAPES) + SHAPES.index(self.shape)


@dataclass(frozen=True)
class Scene:
    """A rendered-to-be image: background grey level and one or two shapes."""

    image_size: int
    background: int
    shapes: tuple[Shape, ...]


def class_names() -> list[str]:
    """Names of the image-classification labels, ``"<color> <shape>"``, by label index."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def sample_scene(rng: np.random.Generator, image_size: int, num_shapes: int | None = None) -> Scene:
    """A random scene with ``num_shapes`` (1 or 2; random when ``None``) non-overlapping shapes.

    Two shapes never share both colour and shape, so every shape can be named uniquely.
    """
    n = int(rng.integers(1, 3)) if num_shapes is None else num_shapes
    if n not in (1, 2):
        raise ValueError(f"sample_scene: num_shapes must be 1 or 2, got {n}.")
    shapes: list[Shape] = []
    colors, kinds = list(COLORS), list(SHAPES)
    gap = max(1, image_size // 32)
    while len(shapes) < n:
        color = colors[int(rng.integers(len(colors)))]
        kind = kinds[int(rng.integers(len(kinds)))]
        if any(s.color == color and s.shape == kind for s in shapes):
            continue
        size = "small" if rng.random() < 0.5 else "large"
        lo, hi = SIZES[size]
        side = max(4, round(image_size * float(rng.uniform(lo, hi))))
        for _ in range(100):
            x = int(rng.integers(gap, image_size - side - gap + 1))
            y = int(rng.integers(gap, image_size - side - gap + 1))
            box = (x, y, side, side)
            if all(not _overlaps(box, s.box, gap) for s in shapes):
                shapes.append(Shape(color, kind, size, box))
                break
        else:  # no room: start again
            shapes = []
    return Scene(image_size, int(rng.integers(200, 246)), tuple(shapes))


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: ``"above"``, ``"below"``, ``"left of"``, ``"right of"``."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ay - by) >= abs(ax - bx):
        return "above" if ay < by else "below"
    return "left of" if ax < bx else "right of"


def _np(s: Shape, size: bool = True) -> str:
    return f"{s.size} {s.color} {s.shape}" if size else f"{s.color} {s.shape}"


def captions(scene: Scene) -> list[str]:
    """Five different true captions of ``scene``.

    The first two name everything :func:`scene_key` names (every shape's size, colour and
    kind, and the relation of two shapes), so that they are true of exactly the scenes with the
    same key; the later ones may leave a detail out (size, relation).
    """
    if len(scene.shapes) == 1:
        (s,) = scene.shapes
        return [
            f"a {_np(s)}",
            f"there is one {s.size} {s.shape} and it is {s.color}",
            f"a {s.color} {s.shape} on a grey background",
            f"a single {s.color} {s.shape}",
            f"one {_np(s)} alone in the picture",
        ]
    a, b = scene.shapes
    r_ab, r_ba = relation(a, b), relation(b, a)
    return [
        f"a {_np(a)} {r_ab} a {_np(b)}",
        f"a {_np(b)} {r_ba} a {_np(a)}",
        f"a {a.color} {a.shape} and a {b.color} {b.shape}",
        f"there are two shapes: a {_np(b)} and a {_np(a)}",
        f"the {a.color} {a.shape} is {r_ab} the {b.color} {b.shape}",
    ]


def scene_key(scene: Scene) -> str:
    """What the complete captions of ``scene`` say, as a canonical string.

    Two scenes with equal keys are described alike by every complete caption (the first two of
    :func:`captions`): no caption can tell them apart, so training must not use one as the
    other's negative. The synthetic datasets use it as the ``image_id`` of image-text and region
    samples, the id that id-aware ITC/ITM treat as "the same picture".
    """
    if len(scene.shapes) == 1:
        return _np(scene.shapes[0]).replace(" ", "_")
    a, b = sorted(scene.shapes, key=lambda s: (s.color, s.shape))
    return f"{_np(a)} {relation(a, b)} {_np(b)}".replace(" ", "_")


def region_caption(scene: Scene, index: int) -> str:
    """A caption of shape ``index`` alone, mentioning its neighbour when there is one."""
    s = scene.shapes[index]
    if len(scene.shapes) == 1:
        return f"a {_np(s)}"
    other = scene.shapes[1 - index]
    return f"a {_np(s)} {relation(s, other)} a {other.color} {other.shape}"


def referring_expression(scene: Scene, index: int, rng: np.random.Generator) -> str:
    """An expression that picks out shape ``index`` and no other shape of ``scene``."""
    s = scene.shapes[index]
    if len(scene.shapes) == 1:
        return f"the {s.color} {s.shape}"
    other = scene.shapes[1 - index]
    options = [f"the {s.color} {s.shape}", f"the {s.shape} {relation(s, other)} the {other.shape}"]
    if s.color != other.color:
        options.append(f"the {s.color} shape")
    if s.shape != other.shape:
        options.append(f"the {s.shape}")
    if s.size != other.size:
        options.append(f"the {s.size} {s.shape}" if s.shape == other.shape else f"the {s.size} one")
    return options[int(rng.integers(len(options)))]
