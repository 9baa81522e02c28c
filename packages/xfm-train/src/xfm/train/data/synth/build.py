"""``build_synthetic``: write the complete shapes-world dataset into a folder.

Layout of ``out``::

    synth.json                     manifest: seed, sizes, counts, class names, paths
    tokenizer/                     RoBERTa-style BPE: tokenizer.json, vocab.json, merges.txt
    images/{train,test}/NNNNNN.png the rendered images (the task sets refer to them)
    annotations/{train,test}.json  X-VLM style pretraining list: {"image", "caption", "image_id"}

``image_id`` (image-text, region, retrieval task) is ``SPLIT-`` + :func:`scene_key`: scenes that
every complete caption describes alike share it, so that id-aware ITC/ITM (and the official
retrieval fine-tuning, which groups by ``image_id``) never take one as the other's negative (with
unique ids, 2000 train images have about 780 distinct keys, so the hardest "negatives" the ITC
similarity picks are often true matches: label noise). Held-out retrieval counts a caption's
image as found when an image of the same key is. Sample keys (``id``) and file names stay
unique per image.
    mds/{text,image_text,region,image}/{train,test}/   MDS shards of the four sources
    tasks/retrieval_{train,test}.json  tasks/vqa_{train,test}.json  tasks/vqa_answers.json
    tasks/nlvr_{train,test}.json       tasks/refexp_{train,test}.json

Everything is a function of ``seed`` and the sizes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xfm.train.data.images import encode_image
from xfm.train.data.synth.render import render
from xfm.train.data.synth.tasks import nlvr_items, refexp_items, retrieval_item, vqa_items
from xfm.train.data.synth.tokenizer import train_bpe_tokenizer
from xfm.train.data.synth.world import (
    Scene,
    captions,
    class_names,
    region_caption,
    sample_scene,
    scene_key,
)
from xfm.train.data.writers import (
    ImageTextWriter,
    ImageWriter,
    RegionWriter,
    TextWriter,
    WriteSummary,
)

__all__ = ["SPLITS", "SynthConfig", "build_synthetic", "text_corpus"]

SPLITS = ("train", "test")
_SPLIT_SALT = {"train": 1, "test": 2, "text": 3, "tasks": 4}


@dataclass
class SynthConfig:
    """Sizes of the synthetic dataset.

    Attributes:
        seed: everything is derived from it.
        image_size: side of the square images in pixels.
        num_train: training images.
        num_test: held-out images.
        captions_per_image: image-text samples written per training image (test: all five).
        num_text: plain-text documents per split (test: a tenth).
        vocab_size: size of the BPE vocabulary.
        compression: MDS shard compression (``None``, ``"zstd"``...).
        shard_size: MDS shard size limit in bytes.
    """

    seed: int = 0
    image_size: int = 64
    num_train: int = 2000
    num_test: int = 200
    captions_per_image: int = 2
    num_text: int = 4000
    vocab_size: int = 1000
    compression: str | None = None
    shard_size: int = 1 << 22

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"SynthConfig.image_size must be >= 16 pixels, got {self.image_size}.")
        for name in ("num_train", "num_test", "num_text"):
            if getattr(self, name) < 2:
                raise ValueError(f"SynthConfig.{name} must be >= 2, got {getattr(self, name)}.")
        if not 1 <= self.captions_per_image <= 5:
            raise ValueError(
                f"SynthConfig.captions_per_image must be in 1..5, got {self.captions_per_image}."
            )


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def text_corpus(seed: int, count: int, image_size: int = 64) -> list[str]:
    """``count`` plain-text documents (1-3 caption-like sentences each) about shapes."""
    rng = _rng(seed, _SPLIT_SALT["text"], count)
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(int(rng.integers(1, 4))):
            caps = captions(sample_scene(rng, image_size))
            sentences.append(caps[int(rng.integers(len(caps)))])
        docs.append(". ".join(sentences) + ".")
    return docs


#: Format of ``synth.json``; 2: ``image_id`` is the scene key (see the module docstring).
SYNTH_FORMAT = "xfm-synth-shapes/2"

#: What :func:`build_synthetic` writes into its folder (removed before a rebuild).
GENERATED = ("synth.json", "tokenizer", "images", "annotations", "mds", "tasks")


def build_synthetic(
    out: str | Path, config: SynthConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Render and write the whole synthetic dataset into ``out`` (a local folder, or an
    ``s3://`` / ``gs://`` URL: built in a temporary folder, then uploaded file by file).

    Returns:
        The manifest (also written to ``out/synth.json``), including a write summary per
        source and split.
    """
    cfg = config or SynthConfig()
    if (
        isinstance(out, str)
        and re.match(r"^[a-z][a-z0-9+.-]*://", out)
        and not out.startswith("file://")
    ):
        return _build_remote(out, cfg, progress)
    root = Path(str(out).removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": SYNTH_FORMAT,
        "config": asdict(cfg),
        "class_names": class_names(),
        "tokenizer": "tokenizer",
        "mds": {},
        "tasks": {},
        "summaries": {},
    }
    scenes: dict[str, list[Scene]] = {}
    texts: dict[str, list[str]] = {
        "train": text_corpus(cfg.seed, cfg.num_text, cfg.image_size),
        "test": text_corpus(cfg.seed + 1_000_003, max(2, cfg.num_text // 10), cfg.image_size),
    }
    for split, count in (("train", cfg.num_train), ("test", cfg.num_test)):
        rng = _rng(cfg.seed, _SPLIT_SALT[split])
        scenes[split] = [sample_scene(rng, cfg.image_size) for _ in range(count)]

    tok_texts = [c for split in SPLITS for sc in scenes[split] for c in captions(sc)]
    train_bpe_tokenizer(tok_texts + texts["train"], root / "tokenizer", cfg.vocab_size)

    for split in SPLITS:
        _write_split(root, split, scenes[split], texts[split], cfg, manifest, progress)

    rng = _rng(cfg.seed, _SPLIT_SALT["tasks"])
    answers: set[str] = set()
    for split in SPLITS:
        paths = [f"images/{split}/{i:06d}.png" for i in range(len(scenes[split]))]
        ids = [f"{split}-{i:06d}" for i in range(len(scenes[split]))]
        keys = [f"{split}-{scene_key(s)}" for s in scenes[split]]
        retrieval = [retrieval_item(s, p, k) for s, p, k in zip(scenes[split], paths, keys)]
        vqa: list[dict[str, Any]] = []
        refexp: list[dict[str, Any]] = []
        for s, p, i in zip(scenes[split], paths, ids):
            vqa += vqa_items(s, p, rng, len(vqa))
            refexp += refexp_items(s, p, i, rng, len(refexp))
        nlvr = nlvr_items(scenes[split], paths, rng, count=len(scenes[split]))
        answers.update(a for q in vqa for a in q["answer"])
        for task, items in (
            ("retrieval", retrieval),
            ("vqa", vqa),
            ("nlvr", nlvr),
            ("refexp", refexp),
        ):
            rel = f"tasks/{task}_{split}.json"
            _write_json(root / rel, items)
            manifest["tasks"].setdefault(task, {})[split] = rel
    _write_json(root / "tasks/vqa_answers.json", sorted(answers))
    manifest["tasks"]["vqa_answers"] = "tasks/vqa_answers.json"
    _write_json(root / "synth.json", manifest)
    return manifest


def _build_remote(url: str, cfg: SynthConfig, progress: bool) -> dict[str, Any]:
    """Build into a temporary local folder, then upload every file under ``url``."""
    import tempfile

    from xfm.core.checkpoint.storage import resolve

    with tempfile.TemporaryDirectory(prefix="xfm-synth-") as tmp:
        manifest = build_synthetic(tmp, cfg, progress)
        fs, base = resolve(url)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        fs.put(
            [str(p) for p in files],
            [base.rstrip("/") + "/" + p.relative_to(tmp).as_posix() for p in files],
        )
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _write_split(
    root: Path,
    split: str,
    scenes: list[Scene],
    texts: list[str],
    cfg: SynthConfig,
    manifest: dict[str, Any],
    progress: bool,
) -> None:
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {
        "compression": cfg.compression,
        "size_limit": cfg.shard_size,
        "exist_ok": True,
    }
    mds = {src: root / "mds" / src / split for src in ("text", "image_text", "region", "image")}
    n_caps = cfg.captions_per_image if split == "train" else 5
    annotations = []
    with (
        TextWriter(str(mds["text"]), **kw) as tw,
        ImageTextWriter(str(mds["image_text"]), **kw) as itw,
        RegionWriter(str(mds["region"]), **kw) as rw,
        ImageWriter(str(mds["image"]), **kw) as iw,
    ):
        for i, text in enumerate(texts):
            tw.write(text, id=f"{split}-text-{i:06d}")
        for i, scene in enumerate(tqdm(scenes, desc=f"synth {split}", disable=not progress)):
            sample = f"{split}-{i:06d}"  # unique sample key
            image_id = f"{split}-{scene_key(scene)}"  # equal for indistinguishable scenes
            png = encode_image(render(scene), "PNG")
            (img_dir / f"{i:06d}.png").write_bytes(png)
            for c, caption in enumerate(captions(scene)[:n_caps]):
                itw.write(png, caption, image_id=image_id, id=f"{sample}-c{c}")
                annotations.append(
                    {
                        "image": f"images/{split}/{i:06d}.png",
                        "caption": caption,
                        "image_id": image_id,
                    }
                )
            for r, shape in enumerate(scene.shapes):
                rw.write(
                    png,
                    shape.box,
                    region_caption(scene, r),
                    image_id=image_id,
                    id=f"{sample}-r{r}",
                    size=(cfg.image_size, cfg.image_size),
                )
            iw.write(png, id=sample, label=scene.shapes[0].label)
    for w in (tw, itw, rw, iw):
        summary: WriteSummary = w.summary
        manifest["summaries"][f"{w.source}/{split}"] = {
            "written": summary.written,
            "skipped": dict(summary.skipped),
        }
        manifest["mds"].setdefault(w.source, {})[split] = f"mds/{w.source}/{split}"
    _write_json(root / "annotations" / f"{split}.json", annotations)
