"""Downstream task sets over shapes-world scenes, in the JSON layouts of the official data.

* retrieval (COCO/Flickr Karpathy style as used by X-VLM): ``{"image", "image_id", "caption": [..]}``
* VQA: ``{"question_id", "image", "question", "answer": [..]}`` plus the answer list
* NLVR2: ``{"images": [left, right], "sentence", "label": "True" | "False"}``
* referring expressions (RefCOCO+ style): ``{"ref_id", "image", "image_id", "text", "bbox": [x, y, w, h]}``
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xfm.train.data.synth.world import (
    COLORS,
    SHAPES,
    Scene,
    captions,
    referring_expression,
    relation,
)

__all__ = ["nlvr_items", "refexp_items", "retrieval_item", "vqa_items"]


def retrieval_item(scene: Scene, image: str, image_id: str) -> dict[str, Any]:
    """One retrieval entry: the image and its five captions."""
    return {"image": image, "image_id": image_id, "caption": captions(scene)}


def _has(scene: Scene, color: str | None = None, shape: str | None = None) -> bool:
    return any(
        (color is None or s.color == color) and (shape is None or s.shape == shape)
        for s in scene.shapes
    )


def vqa_items(
    scene: Scene, image: str, rng: np.random.Generator, first_qid: int
) -> list[dict[str, Any]]:
    """Yes/no, colour, shape, count and relation questions about ``scene`` with answers."""
    qa: list[tuple[str, str]] = []
    s = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if rng.random() < 0.5:
        qa.append((f"is there a {s.color} {s.shape}?", "yes"))
    else:
        while True:
            c = list(COLORS)[int(rng.integers(len(COLORS)))]
            k = SHAPES[int(rng.integers(len(SHAPES)))]
            if not _has(scene, c, k):
                break
        qa.append((f"is there a {c} {k}?", "no"))
    if sum(t.shape == s.shape for t in scene.shapes) == 1:
        qa.append((f"what color is the {s.shape}?", s.color))
    if sum(t.color == s.color for t in scene.shapes) == 1:
        qa.append((f"what shape is the {s.color} object?", s.shape))
    qa.append(("how many shapes are there?", ["zero", "one", "two"][len(scene.shapes)]))
    if len(scene.shapes) == 2 and scene.shapes[0].shape != scene.shapes[1].shape:
        a, b = scene.shapes
        r = relation(a, b)
        if rng.random() < 0.5:
            qa.append((f"is the {a.shape} {r} the {b.shape}?", "yes"))
        else:
            qa.append((f"is the {a.shape} {relation(b, a)} the {b.shape}?", "no"))
    return [
        {"question_id": first_qid + i, "image": image, "question": q, "answer": [a]}
        for i, (q, a) in enumerate(qa)
    ]


def _statement(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    kind = int(rng.integers(4))
    c = list(COLORS)[int(rng.integers(len(COLORS)))]
    k = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == 0:
        return f"both images contain a {c} shape", _has(left, c) and _has(right, c)
    if kind == 1:
        return (
            f"the left image contains a {k} and the right image does not",
            _has(left, shape=k) and not _has(right, shape=k),
        )
    if kind == 2:
        return (
            "there are more shapes in the left image than in the right image",
            len(left.shapes) > len(right.shapes),
        )
    return f"exactly one image contains a {c} {k}", _has(left, c, k) != _has(right, c, k)


def nlvr_items(
    scenes: list[Scene], images: list[str], rng: np.random.Generator, count: int
) -> list[dict[str, Any]]:
    """``count`` true/false statements over random image pairs, labels balanced."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        want = len(out) % 2 == 0
        i, j = (int(v) for v in rng.choice(len(scenes), size=2, replace=False))
        for _ in range(20):
            sentence, truth = _statement(scenes[i], scenes[j], rng)
            if truth == want:
                out.append(
                    {
                        "images": [images[i], images[j]],
                        "sentence": sentence,
                        "label": "True" if truth else "False",
                        "identifier": f"synth-{len(out)}",
                    }
                )
                break
    return out


def refexp_items(
    scene: Scene, image: str, image_id: str, rng: np.random.Generator, first_ref: int
) -> list[dict[str, Any]]:
    """One referring expression with its box per shape of ``scene``."""
    return [
        {
            "ref_id": first_ref + i,
            "image": image,
            "image_id": image_id,
            "text": referring_expression(scene, i, rng),
            "bbox": list(s.box),
        }
        for i, s in enumerate(scene.shapes)
    ]
