"""The converters on small fixture files in the real formats, through ``xfm data prepare``."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from xfm.core.cli import main
from xfm.train.data import SourceDataset


def _img(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _read(url: Path, source: str) -> list[dict]:
    ds = SourceDataset(source, str(url), shuffle=False, batch_size=1)
    return [ds[i] for i in range(ds.num_samples)]


def test_xvlm_json(tmp_path: Path, capsys):
    a = _img(tmp_path / "img/a.jpg", (255, 0, 0))
    (tmp_path / "img/bad.jpg").write_bytes(b"not a jpeg")
    ann = [
        {"image": "a.jpg", "caption": ["a red picture", "red"]},
        {"image": "missing.jpg", "caption": "x"},
        {"image": "bad.jpg", "caption": "y"},
        {"image": "a.jpg", "caption": ""},
        {"caption": "no image"},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    out = tmp_path / "out"
    rc = main(
        [
            "data",
            "prepare",
            "xvlm",
            "--ann",
            str(tmp_path / "ann.json"),
            "--image-root",
            str(tmp_path / "img"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    report = capsys.readouterr().out
    assert "2 written, 4 skipped" in report
    for reason in ("image file not found", "corrupt image", "empty caption", "missing field"):
        assert reason in report
    rows = _read(out, "image_text")
    assert [(r["caption"], r["image"], r["image_id"]) for r in rows] == [
        ("a red picture", a, "a.jpg"),
        ("red", a, "a.jpg"),
    ]


def test_coco_karpathy(tmp_path: Path, capsys):
    a = _img(tmp_path / "coco/train2014/A.jpg", (0, 255, 0))
    _img(tmp_path / "coco/val2014/B.jpg", (0, 0, 255))
    data = {
        "images": [
            {
                "filepath": "train2014",
                "filename": "A.jpg",
                "split": "train",
                "cocoid": 7,
                "sentences": [{"raw": "A green box.", "tokens": ["a"]}, {"raw": " ", "tokens": []}],
            },
            {
                "filepath": "val2014",
                "filename": "B.jpg",
                "split": "test",
                "cocoid": 8,
                "sentences": [{"raw": "blue"}],
            },
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "prepare",
                "coco-karpathy",
                "--ann",
                str(tmp_path / "dataset_coco.json"),
                "--image-root",
                str(tmp_path / "coco"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "1 written, 1 skipped" in capsys.readouterr().out
    (row,) = _read(out, "image_text")
    assert (row["caption"], row["image"], row["image_id"]) == ("A green box.", a, "7")


def test_vg_and_coco_regions(tmp_path: Path, capsys):
    v = _img(tmp_path / "vg/VG_100K/1.jpg", (9, 9, 9), (40, 30))
    vg = [
        {
            "id": 1,
            "regions": [
                {
                    "region_id": 11,
                    "image_id": 1,
                    "x": 2,
                    "y": 3,
                    "width": 10,
                    "height": 5,
                    "phrase": "a cat",
                },
                {
                    "region_id": 12,
                    "image_id": 1,
                    "x": 2,
                    "y": 3,
                    "width": 0,
                    "height": 5,
                    "phrase": "flat",
                },
                {
                    "region_id": 13,
                    "image_id": 1,
                    "x": 2,
                    "y": 3,
                    "width": 4,
                    "height": 5,
                    "phrase": "",
                },
            ],
        },
        {
            "id": 2,
            "regions": [
                {
                    "region_id": 21,
                    "image_id": 2,
                    "x": 0,
                    "y": 0,
                    "width": 1,
                    "height": 1,
                    "phrase": "gone",
                }
            ],
        },
    ]
    (tmp_path / "regions.json").write_text(json.dumps(vg))
    out = tmp_path / "vg_out"
    assert (
        main(
            [
                "data",
                "prepare",
                "vg-regions",
                "--ann",
                str(tmp_path / "regions.json"),
                "--image-root",
                str(tmp_path / "vg"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "1 written, 3 skipped" in capsys.readouterr().out
    (r,) = _read(out, "region")
    assert (r["image"], r["box"], r["caption"], r["width"], r["height"]) == (
        v,
        [2.0, 3.0, 10.0, 5.0],
        "a cat",
        40,
        30,
    )

    c = _img(tmp_path / "coco/x.jpg", (1, 2, 3), (30, 20))
    inst = {
        "images": [{"id": 5, "file_name": "x.jpg", "width": 30, "height": 20}],
        "annotations": [
            {"id": 50, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 51, "image_id": 5, "category_id": 99, "bbox": [1, 2, 3, 4]},
        ],
        "categories": [{"id": 1, "name": "dog"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    out = tmp_path / "coco_out"
    assert (
        main(
            [
                "data",
                "prepare",
                "coco-regions",
                "--ann",
                str(tmp_path / "inst.json"),
                "--image-root",
                str(tmp_path / "coco"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "1 written, 1 skipped" in capsys.readouterr().out
    (r,) = _read(out, "region")
    assert (r["image"], r["box"], r["caption"], r["image_id"]) == (
        c,
        [1.0, 2.0, 3.0, 4.0],
        "dog",
        "5",
    )


def test_imagefolder_and_text(tmp_path: Path, capsys):
    cat = _img(tmp_path / "inet/cat/1.jpg", (5, 5, 5))
    dog = _img(tmp_path / "inet/dog/2.jpg", (6, 6, 6))
    (tmp_path / "inet/dog/notes.txt").write_text("hi")
    out = tmp_path / "img_out"
    assert (
        main(
            [
                "data",
                "prepare",
                "imagefolder",
                "--root",
                str(tmp_path / "inet"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "2 written, 1 skipped" in report and "not an image file" in report
    rows = _read(out, "image")
    assert [(r["image"], r["label"]) for r in rows] == [(cat, 0), (dog, 1)]

    (tmp_path / "a.txt").write_text("first doc\n\n  second doc  \n")
    out = tmp_path / "text_out"
    assert (
        main(
            [
                "data",
                "prepare",
                "text",
                "--files",
                str(tmp_path / "a.txt"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "2 written, 1 skipped" in capsys.readouterr().out
    assert [r["text"] for r in _read(out, "text")] == ["first doc", "second doc"]


def test_prepare_reports_missing_arguments(tmp_path: Path, capsys):
    assert main(["data", "prepare", "xvlm", "--out", str(tmp_path / "o")]) == 1
    assert "needs --ann and --image-root" in capsys.readouterr().err
