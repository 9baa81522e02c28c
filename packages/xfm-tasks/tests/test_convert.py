"""Converters from the official annotation formats, on small fixture files in those formats,
and the task datasets / evaluators reading what they write."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from xfm.tasks.base_data import ImageReader
from xfm.tasks.convert import convert_karpathy, convert_nlvr2, convert_refcoco, load_refs_pickle
from xfm.tasks.grounding import GroundingSet
from xfm.tasks.metrics import grounding_accuracy
from xfm.tasks.nlvr import NLVRSet
from xfm.tasks.retrieval import RetrievalEvalSet, RetrievalTrainSet


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _mds_count(folder: Path) -> int:
    index = json.loads((folder / "index.json").read_text())
    return sum(int(s["samples"]) for s in index["shards"])


def test_karpathy_to_task_json_and_mds(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(4):
        _png(root / "val2014" / f"img{i}.jpg", (20 + i, 16), (10 * i, 0, 0))
    sentences = [[{"raw": f"picture {i} caption {j}"} for j in range(2 + i % 2)] for i in range(4)]
    ann = {
        "images": [
            {
                "filepath": "val2014",
                "filename": f"img{i}.jpg",
                "split": split,
                "cocoid": 100 + i,
                "sentences": sentences[i],
            }
            for i, split in enumerate(["train", "restval", "test", "test"])
        ],
        "dataset": "coco",
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(ann))
    written = convert_karpathy(tmp_path / "dataset_coco.json", tmp_path / "out", image_root=root)
    train = json.loads(Path(written["train"]).read_text())
    test = json.loads(Path(written["test"]).read_text())
    assert [e["image_id"] for e in train] == ["100", "101"]  # restval joins train
    assert [len(e["caption"]) for e in test] == [2, 3]
    assert json.loads(Path(written["val"]).read_text()) == []
    assert _mds_count(tmp_path / "out" / "mds" / "retrieval_train") == 2 + 3
    reader = ImageReader(root, 16)
    gallery = RetrievalEvalSet(test, reader)
    assert gallery.txt2img.tolist() == [0, 0, 1, 1, 1]
    assert gallery[1].shape == (3, 16, 16)
    pairs = RetrievalTrainSet(train, reader)
    assert [p[2] for p in pairs.pairs] == [0, 0, 1, 1, 1]


def test_karpathy_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps([{"image": "a"}]))
    with pytest.raises(ValueError, match="'images' list"):
        convert_karpathy(tmp_path / "x.json", tmp_path / "out")


def test_nlvr2_jsonl_to_task_json_and_mds(tmp_path: Path) -> None:
    root = tmp_path / "nlvr2"
    lines = []
    for n, (split, directory) in enumerate([("train", 3), ("train", 7), ("dev", None)]):
        ident = f"{split}-{10 + n}-0-{n % 2}"
        folder = root / split / str(directory) if directory is not None else root / split
        for i in (0, 1):
            _png(folder / f"{split}-{10 + n}-0-img{i}.png", (12, 10), (0, 50 * i, 0))
        entry = {
            "identifier": ident,
            "sentence": f"statement {n}",
            "label": ["True", "False"][n % 2],
        }
        if directory is not None:
            entry["directory"] = directory
        lines.append((split, json.dumps(entry)))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.json").write_text("\n".join(line for s, line in lines if s == split))
    written = convert_nlvr2(
        {"train": tmp_path / "train.json", "dev": tmp_path / "dev.json"}, tmp_path / "out", root
    )
    train = json.loads(Path(written["train"]).read_text())
    assert train[0]["images"] == ["train/3/train-10-0-img0.png", "train/3/train-10-0-img1.png"]
    dev = json.loads(Path(written["dev"]).read_text())
    assert dev[0]["images"] == ["dev/dev-12-0-img0.png", "dev/dev-12-0-img1.png"]
    assert _mds_count(tmp_path / "out" / "mds" / "nlvr_train") == 2
    data = NLVRSet(train, ImageReader(root, 8))
    left, right, sentence, label = data[1]
    assert left.shape == right.shape == (3, 8, 8)
    assert (sentence, label) == ("statement 1", 0)


def _refer_fixture(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "coco"
    images = [
        {"id": 1, "file_name": "COCO_1.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "COCO_2.jpg", "width": 50, "height": 20},
    ]
    for im in images:
        _png(root / "train2014" / im["file_name"], (im["width"], im["height"]), (0, 0, 200))
    anns = [
        {"id": 11, "image_id": 1, "bbox": [4, 5, 10, 12], "category_id": 1},
        {"id": 12, "image_id": 2, "bbox": [20, 2, 30, 16], "category_id": 1},
    ]
    refs = [
        {
            "ref_id": 0,
            "ann_id": 11,
            "image_id": 1,
            "split": "train",
            "sentences": [{"sent": "left thing"}, {"sent": "the small one"}],
        },
        {
            "ref_id": 1,
            "ann_id": 12,
            "image_id": 2,
            "split": "testA",
            "sentences": [{"sent": "right thing"}],
        },
    ]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return tmp_path / "refs(unc).p", tmp_path / "instances.json", root


def test_refcoco_to_task_json_mds_and_evaluation(tmp_path: Path) -> None:
    refs, inst, root = _refer_fixture(tmp_path)
    written = convert_refcoco(
        refs, inst, tmp_path / "out", "train2014", image_root=root, name="refcoco+"
    )
    train = json.loads(Path(written["train"]).read_text())
    assert [e["text"] for e in train] == ["left thing", "the small one"]
    assert train[0]["bbox"] == [4.0, 5.0, 10.0, 12.0]
    assert _mds_count(tmp_path / "out" / "mds" / "refcoco+_train") == 2
    test_a = json.loads(Path(written["testA"]).read_text())
    data = GroundingSet(test_a, ImageReader(root, 16))
    _, _text, target, gt, size = data[0]
    # normalised target of [20, 2, 30, 16] in a 50 x 20 image: centre (35, 10)
    assert torch.allclose(target, torch.tensor([35 / 50, 10 / 20, 30 / 50, 16 / 20]))
    assert size.tolist() == [50, 20]
    # the ground truth converted back through the official evaluation scores 100 %
    assert grounding_accuracy(target[None], gt[None], size[None]) == 100.0


def test_refs_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "bad.p").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_refs_pickle(tmp_path / "bad.p")
