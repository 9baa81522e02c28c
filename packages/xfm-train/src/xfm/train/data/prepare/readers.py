"""Readers of the official dataset formats; each yields column dicts or :class:`Skip` records.

* :func:`read_xvlm_json`: X-VLM / X-FM pretraining lists ``[{"image", "caption", ...}]``.
* :func:`read_coco_karpathy`: ``dataset_coco.json`` (Karpathy splits), one sample per sentence.
* :func:`read_vg_regions`: Visual Genome ``region_descriptions.json``.
* :func:`read_coco_regions`: COCO ``instances_*.json``; the region caption is the category name.
* :func:`read_image_folder`: an ImageFolder tree ``root/<class>/<image>`` (ImageNet).
* :func:`read_text_files`: plain text files, one document per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xfm.train.data.errors import BadSampleError
from xfm.train.data.images import read_image_file
from xfm.train.data.prepare.common import Skip

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_coco_karpathy",
    "read_coco_regions",
    "read_image_folder",
    "read_text_files",
    "read_vg_regions",
    "read_xvlm_json",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


def _load_json(path: str | Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _image(root: Path, rel: str) -> tuple[bytes, tuple[int, int]] | Skip:
    try:
        return read_image_file(root / rel)
    except BadSampleError as exc:
        return Skip(str(exc).split(":")[0] + f": {root / rel}")


def read_xvlm_json(path: str | Path, image_root: str | Path) -> Iterator[dict[str, Any] | Skip]:
    """Pairs from an X-VLM style list: ``{"image": path, "caption": str | [str]}`` entries.

    ``image_id`` is the entry's ``image_id`` when present, else the image path.
    """
    root = Path(image_root)
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise ValueError(
            f"{path}: expected a JSON list of {{'image', 'caption'}}, got {type(entries).__name__}"
        )
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or "caption" not in e:
            yield Skip(f"missing field 'image' or 'caption': entry {n}")
            continue
        img = _image(root, e["image"])
        if isinstance(img, Skip):
            yield img
            continue
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        for c, cap in enumerate(caps):
            if not isinstance(cap, str) or not cap.strip():
                yield Skip(f"empty caption: entry {n}")
                continue
            yield {
                "id": f"{n}-{c}",
                "image": img[0],
                "caption": cap.strip(),
                "image_id": str(e.get("image_id", e["image"])),
            }


def read_coco_karpathy(
    path: str | Path, image_root: str | Path, splits: Sequence[str] = ("train", "restval")
) -> Iterator[dict[str, Any] | Skip]:
    """Pairs of ``dataset_coco.json``: images of ``splits``, one sample per sentence."""
    root = Path(image_root)
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: expected Karpathy's dataset_coco.json with an 'images' list")
    for e in data["images"]:
        if e.get("split") not in splits:
            continue
        rel = f"{e.get('filepath', '')}/{e['filename']}".lstrip("/")
        img = _image(root, rel)
        if isinstance(img, Skip):
            yield img
            continue
        image_id = str(e.get("cocoid", e.get("imgid", rel)))
        for s, sent in enumerate(e.get("sentences", [])):
            raw = sent.get("raw", " ".join(sent.get("tokens", [])))
            if not raw.strip():
                yield Skip(f"empty caption: image {image_id} sentence {s}")
                continue
            yield {
                "id": f"{image_id}-{s}",
                "image": img[0],
                "caption": raw.strip(),
                "image_id": image_id,
            }


def _find_vg_image(root: Path, image_id: int) -> Path:
    for sub in ("", "VG_100K", "VG_100K_2", "images"):
        p = root / sub / f"{image_id}.jpg"
        if p.exists():
            return p
    return root / f"{image_id}.jpg"


def read_vg_regions(path: str | Path, image_root: str | Path) -> Iterator[dict[str, Any] | Skip]:
    """Regions of Visual Genome ``region_descriptions.json`` (``[{"id", "regions": [...]}]``).

    Images are looked up as ``<image_root>/[VG_100K|VG_100K_2/]<image_id>.jpg``.
    """
    root = Path(image_root)
    for entry in _load_json(path):
        regions = entry.get("regions", [])
        image_id = entry.get("id", regions[0]["image_id"] if regions else None)
        img = _image(root, str(_find_vg_image(root, image_id).relative_to(root)))
        if isinstance(img, Skip):
            yield img
            continue
        data, (w, h) = img
        for r in regions:
            box = [r.get("x"), r.get("y"), r.get("width"), r.get("height")]
            if None in box or not str(r.get("phrase", "")).strip():
                yield Skip(f"missing box or phrase: region {r.get('region_id')}")
                continue
            yield {
                "id": str(r.get("region_id", f"{image_id}-{len(box)}")),
                "image": data,
                "box": box,
                "caption": r["phrase"].strip(),
                "image_id": str(image_id),
                "width": w,
                "height": h,
            }


def read_coco_regions(path: str | Path, image_root: str | Path) -> Iterator[dict[str, Any] | Skip]:
    """Object regions of COCO ``instances_*.json``; the caption is the category name."""
    root = Path(image_root)
    data = _load_json(path)
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    for im in data.get("images", []):
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        img = _image(root, im["file_name"])
        if isinstance(img, Skip):
            yield img
            continue
        data_bytes, (w, h) = img
        for a in anns:
            name = cats.get(a.get("category_id"))
            if name is None:
                yield Skip(f"unknown category: annotation {a.get('id')}")
                continue
            yield {
                "id": str(a["id"]),
                "image": data_bytes,
                "box": list(a["bbox"]),
                "caption": name,
                "image_id": str(im["id"]),
                "width": w,
                "height": h,
            }


def read_image_folder(root: str | Path) -> tuple[list[str], Iterator[dict[str, Any] | Skip]]:
    """Class names (sorted folder names = label order) and the images of ``root/<class>/*``."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{base}: expected one sub-folder per class, found none")

    def gen() -> Iterator[dict[str, Any] | Skip]:
        for label, cls in enumerate(classes):
            for p in sorted((base / cls).iterdir()):
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    yield Skip(f"not an image file: {p}")
                    continue
                img = _image(base, str(p.relative_to(base)))
                if isinstance(img, Skip):
                    yield img
                    continue
                yield {"id": f"{cls}/{p.name}", "image": img[0], "label": label}

    return classes, gen()


def read_text_files(paths: Sequence[str | Path]) -> Iterator[dict[str, Any] | Skip]:
    """Documents of plain text files, one per line; blank lines are skipped (counted)."""
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh):
                text = line.strip()
                if not text:
                    yield Skip(f"empty line: {path}:{n + 1}")
                    continue
                yield {"id": f"{Path(path).name}:{n + 1}", "text": text}
