"""The shapes-world dataset: determinism, captions true to the pixels, task files, processing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xfm.core.cli import main
from xfm.train.data import LoaderConfig, ProcessConfig, SourceConfig, build_loader
from xfm.train.data.synth import COLORS, SynthConfig, build_synthetic
from xfm.train.data.transforms import image_index_of

TINY = {"image_size": 32, "num_train": 6, "num_test": 4, "num_text": 8, "vocab_size": 300}


def _blobs(path: Path) -> dict[str, tuple[float, float, np.ndarray]]:
    """Per colour name: centroid (x, y) and pixel mask of pixels close to that colour."""
    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    out = {}
    for name, rgb in COLORS.items():
        m = np.abs(px - np.array(rgb)).sum(-1) < 40
        if m.sum() >= 4:
            ys, xs = np.nonzero(m)
            out[name] = (xs.mean(), ys.mean(), m)
    return out


def test_same_seed_same_dataset_other_seed_differs(tmp_path: Path):
    a = build_synthetic(tmp_path / "a", SynthConfig(seed=1, **TINY), progress=False)
    b = build_synthetic(tmp_path / "b", SynthConfig(seed=1, **TINY), progress=False)
    c = build_synthetic(tmp_path / "c", SynthConfig(seed=2, **TINY), progress=False)
    assert a == b
    for rel in (
        "annotations/train.json",
        "tasks/vqa_test.json",
        "images/train/000003.png",
        "tokenizer/vocab.json",
    ):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/annotations/train.json").read_text() != (
        tmp_path / "c/annotations/train.json"
    ).read_text()
    assert c["summaries"]["image/train"]["written"] == 6


def test_captions_describe_the_pixels(synth_dir: Path):
    """Colours named in the caption are the colours drawn; relation words match centroids."""
    checked = 0
    for item in json.loads((synth_dir / "tasks/retrieval_test.json").read_text()):
        blobs = _blobs(synth_dir / item["image"])
        caption = item["caption"][0]
        named = [c for c in COLORS if f" {c} " in f" {caption} "]
        assert set(named) == set(blobs), (caption, sorted(blobs))
        assert len(item["caption"]) == 5
        words = caption.split()
        if len(named) == 2 and named[0] != named[1]:
            first = words[2]  # "a <size> <color> <shape> <relation> ..."
            second = next(c for c in named if c != first)
            (x1, y1, _), (x2, y2, _) = blobs[first], blobs[second]
            rel = "above" if y1 < y2 else "below"
            if abs(x1 - x2) > abs(y1 - y2):
                rel = "left" if x1 < x2 else "right"
            assert words[4] == rel, (caption, blobs[first][:2], blobs[second][:2])
            checked += 1
    assert checked >= 2


def test_task_files(synth_dir: Path):
    manifest = json.loads((synth_dir / "synth.json").read_text())
    nlvr = json.loads((synth_dir / manifest["tasks"]["nlvr"]["test"]).read_text())
    labels = [x["label"] for x in nlvr]
    assert abs(labels.count("True") - labels.count("False")) <= 1
    answers = set(json.loads((synth_dir / manifest["tasks"]["vqa_answers"]).read_text()))
    vqa = json.loads((synth_dir / manifest["tasks"]["vqa"]["train"]).read_text())
    assert {"yes", "no"} <= answers and all(q["answer"][0] in answers for q in vqa)
    for ref in json.loads((synth_dir / manifest["tasks"]["refexp"]["test"]).read_text()):
        color = ref["text"].split()[1]
        blobs = _blobs(synth_dir / ref["image"])
        if color in blobs and ref["text"] == f"the {color} shape":
            x, y, w, h = ref["bbox"]
            ys, xs = np.nonzero(blobs[color][2])
            assert (
                x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() <= ys.max() <= y + h
            )


def test_cli_synth(tmp_path: Path, capsys):
    args = [
        "data",
        "synth",
        "--out",
        str(tmp_path / "s"),
        "--image-size",
        "32",
        "--num-train",
        "4",
        "--num-test",
        "2",
        "--num-text",
        "4",
        "--vocab-size",
        "300",
        "--quiet",
    ]
    assert main(args) == 0
    assert "image_text/train: 8 written, 0 skipped" in capsys.readouterr().out
    assert (tmp_path / "s/mds/region/test/index.json").exists()


@pytest.fixture(scope="module")
def step(synth_dir: Path):
    sources = {
        s: SourceConfig(str(synth_dir / f"mds/{s}/train"), 4)
        for s in ("text", "image_text", "region", "image")
    }
    pc = ProcessConfig(tokenizer=str(synth_dir / "tokenizer"), image_size=32, patch_size=8)
    loader = build_loader(sources, LoaderConfig(seed=0), pc)
    out = loader.next_step()
    loader.close()
    return out


def test_text_batch_masks_whole_words(step, synth_dir: Path):
    from xfm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(synth_dir / "tokenizer")
    b = step["text"]
    assert b.input_ids.shape == b.mlm_labels.shape == b.attention_mask.shape
    masked = b.mlm_labels != -100
    assert masked.any()
    assert torch.equal(b.mlm_labels[masked], b.input_ids[masked])
    assert torch.equal(b.mlm_input_ids[~masked], b.input_ids[~masked])
    assert (masked.sum(1) <= 20).all()
    assert (b.input_ids[:, 0] == tok.cls_id).all() and not masked[:, 0].any()
    assert (b.input_ids[b.attention_mask == 0] == tok.pad_id).all()
    docs = (synth_dir / "annotations").exists() and set(b.keys)
    assert docs and all(k.startswith("train-text-") for k in b.keys)


def test_caption_and_region_batches(step, synth_dir: Path):
    from xfm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(synth_dir / "tokenizer")
    captions, image_ids = {}, {}
    for a in json.loads((synth_dir / "annotations/train.json").read_text()):
        captions.setdefault(a["image"], []).append(a["caption"])
        image_ids[a["image"]] = a["image_id"]
    b = step["image_text"]
    for i, key in enumerate(b.keys):
        sample, c = key.rsplit("-c", 1)
        image = f"images/train/{sample.split('-')[1]}.png"
        assert tok.decode(b.text_ids[i]) == captions[image][int(c)]
        assert b.image_index[i] == image_index_of(image_ids[image])
    real = b.masked_labels != -100
    assert real.any() and (b.masked_pos[real] > 0).all()
    rows = torch.arange(len(b)).unsqueeze(1).expand_as(b.masked_pos)
    assert torch.equal(b.text_ids[rows[real], b.masked_pos[real]], b.masked_labels[real])
    assert (b.image_mask.sum(1) == round(75 / 196 * 16)).all()
    assert b.image_index.unique().numel() <= len(b)

    r = step["region"]
    for i, key in enumerate(r.keys):
        image_id, _ = key.rsplit("-r", 1)
        idx = int(image_id.split("-")[1])
        # the rendered shape's pixels lie inside the box (cx, cy, w, h) * 32
        cx, cy, w, h = (r.box[i] * 32).tolist()
        caption = tok.decode(r.text_ids[i])
        color = caption.split()[2]
        _, _, m = _blobs(synth_dir / f"images/train/{idx:06d}.png")[color]
        ys, xs = np.nonzero(m)
        assert cx - w / 2 - 1 <= xs.min() and xs.max() <= cx + w / 2 + 1
        assert cy - h / 2 - 1 <= ys.min() and ys.max() <= cy + h / 2 + 1
        # patches overlapping the box are exactly the region mask
        grid = r.region_patch_mask[i].view(4, 4)
        assert grid[int(cy // 8), int(cx // 8)]
        assert grid.sum() <= 16


def test_scene_key_is_what_the_complete_captions_say() -> None:
    """Equal keys <=> the same two complete captions; different keys share no complete
    caption (so id-aware negatives exclude exactly the scenes a complete caption cannot tell
    apart)."""
    from xfm.train.data.synth.world import captions, sample_scene, scene_key

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, 32) for _ in range(3000)]
    by_key: dict[str, set[str]] = {}
    for scene in scenes:
        complete = set(captions(scene)[:2])
        assert len(complete) == 2
        seen = by_key.setdefault(scene_key(scene), complete)
        assert seen == complete
    owner: dict[str, str] = {}
    for key, complete in by_key.items():
        for caption in complete:
            assert owner.setdefault(caption, key) == key
    assert len(by_key) > 100  # duplicates are common: 3000 scenes, far fewer keys


def test_a_dataset_of_an_older_format_is_built_again(tmp_path: Path) -> None:
    from xfm.train.data.synth.build import SYNTH_FORMAT
    from xfm.train.synthetic import ensure_synthetic

    spec = {"out": str(tmp_path / "s"), "seed": 1, "image_size": 32, "num_train": 4}
    spec |= {"num_test": 2, "num_text": 4, "vocab_size": 300}
    ensure_synthetic(spec, progress=False)
    manifest = tmp_path / "s" / "synth.json"
    data = json.loads(manifest.read_text())
    assert data["format"] == SYNTH_FORMAT
    data["format"] = "xfm-synth-shapes/1"
    manifest.write_text(json.dumps(data))
    (tmp_path / "s" / "images" / "train" / "stale.png").write_bytes(b"old")
    lines: list[str] = []
    ensure_synthetic(spec, progress=False, print_fn=lines.append)
    assert json.loads(manifest.read_text())["format"] == SYNTH_FORMAT
    assert not (tmp_path / "s" / "images" / "train" / "stale.png").exists()
    assert lines and "older xfm (xfm-synth-shapes/1)" in lines[0]
