"""Official VQA v2 / Karpathy captions / GLUE TSV fixtures -> task MDS (``xfm task-data``) ->
the task datasets: every field equals the JSON / TSV path; malformed inputs name file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xfm.core.cli.main import main as xfm
from xfm.tasks.base import TaskDataSection, get_task
from xfm.tasks.glue import read_glue_tsv
from xfm.tasks.task_mds import MDSTable, is_mds, read_glue_mds, write_task_mds

FIXTURES = Path(__file__).parent / "data" / "fixtures"
VQA = FIXTURES / "vqa_v2"
KARPATHY = FIXTURES / "karpathy" / "dataset_coco.json"
GLUE = FIXTURES / "glue"


def _images(root: Path, paths: list[str]) -> None:
    """A distinct small PNG at every annotation path."""
    for n, rel in enumerate(sorted(set(paths))):
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(n).integers(0, 256, (20 + n, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(dst, format="PNG")


def _vqa_args(out: Path, fmt: str, *extra: str) -> list[str]:
    return [
        "task-data",
        "vqa_v2",
        "--split",
        f"val={VQA / 'v2_OpenEnded_mscoco_val2014_questions.json'}",
        "--annotations",
        f"val={VQA / 'v2_mscoco_val2014_annotations.json'}",
        "--split",
        f"test={VQA / 'v2_OpenEnded_mscoco_test2015_questions.json'}",
        "--format",
        fmt,
        "--out",
        str(out),
        *extra,
    ]


def test_vqa_v2_to_mds_round_trips_every_field(tmp_path: Path) -> None:
    out = tmp_path / "vqa"
    assert xfm(_vqa_args(out, "both")) == 0
    for split in ("val", "test"):
        entries = json.loads((out / f"vqa_{split}.json").read_text())
        table = MDSTable(out / "mds" / f"vqa_{split}", "vqa")
        assert len(table) == len(entries) > 0
        assert [table[i] for i in range(len(table))] == entries
    assert "answer" not in MDSTable(out / "mds" / "vqa_test", "vqa")[0]
    assert len(MDSTable(out / "mds" / "vqa_val", "vqa")[0]["answer"]) == 10


def test_vqa_mds_with_images_feeds_the_task_like_json(tmp_path: Path) -> None:
    """With --image-root the shards carry the image files; the VQA task dataset built on the
    MDS folder (no image root needed) yields the same tensors and fields as on the JSON."""
    json_out, mds_out = tmp_path / "json", tmp_path / "mds"
    assert xfm(_vqa_args(json_out, "json")) == 0
    entries = json.loads((json_out / "vqa_val.json").read_text())
    root = tmp_path / "coco"
    test = json.loads((json_out / "vqa_test.json").read_text())
    _images(root, [e["image"] for e in entries + test])
    assert xfm(_vqa_args(mds_out, "mds", "--image-root", str(root))) == 0
    assert not (mds_out / "vqa_val.json").exists()
    table = MDSTable(mds_out / "mds" / "vqa_val", "vqa")
    for i, entry in enumerate(entries):
        row = table[i]
        assert row.pop("image_bytes") == (root / entry["image"]).read_bytes()
        assert row == entry
    task = get_task("vqa")
    a = task._data(
        TaskDataSection(root=str(root), image_size=16),
        str(json_out / "vqa_val.json"),
        "v",
        False,
        None,
    )
    b = task._data(
        TaskDataSection(root=str(tmp_path / "nowhere"), image_size=16),
        str(mds_out / "mds" / "vqa_val"),
        "v",
        False,
        None,
    )
    assert len(a.dataset) == len(b.dataset) == len(entries)
    for i in range(len(entries)):
        (ia, *ra), (ib, *rb) = a.dataset[i], b.dataset[i]
        assert torch.equal(ia, ib) and ra == rb


def test_captions_to_mds_round_trips_and_feed_the_task(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    args = ["task-data", "captions", "--ann", str(KARPATHY), "--out", str(out)]
    assert xfm([*args, "--format", "both"]) == 0
    for split in ("train", "val", "test"):
        entries = json.loads((out / f"coco_karpathy_{split}.json").read_text())
        table = MDSTable(out / "mds" / f"coco_karpathy_{split}", "caption")
        assert [table[i] for i in range(len(table))] == entries
    assert len(MDSTable(out / "mds" / "coco_karpathy_train", "caption")) == 4
    # with the images: the captioning dataset reads the same samples from MDS as from JSON
    root = tmp_path / "coco"
    entries = json.loads((out / "coco_karpathy_train.json").read_text())
    entries += json.loads((out / "coco_karpathy_test.json").read_text())
    _images(root, [e["image"] for e in entries])
    out2 = tmp_path / "cap2"
    assert xfm([*args, "--format", "mds", "--image-root", str(root), "--out", str(out2)]) == 0
    task = get_task("captioning")
    for split, train in (("train", True), ("test", False)):
        a = task._data(
            TaskDataSection(root=str(root), image_size=16),
            str(out / f"coco_karpathy_{split}.json"),
            split,
            train,
            None,
        )
        b = task._data(
            TaskDataSection(root="", image_size=16),
            str(out2 / "mds" / f"coco_karpathy_{split}"),
            split,
            train,
            None,
        )
        assert len(a.dataset) == len(b.dataset) > 0
        for i in range(len(a.dataset)):
            (ia, *ra), (ib, *rb) = a.dataset[i], b.dataset[i]
            assert torch.equal(ia, ib) and ra == rb


@pytest.mark.parametrize(
    ("task", "files"),
    [
        ("mnli", {"train": "MNLI/train.tsv", "dev": "MNLI/dev_matched.tsv"}),
        ("cola", {"dev": "CoLA/dev.tsv"}),
        ("stsb", {"dev": "STS-B/dev.tsv"}),
        ("mrpc", {"dev": "MRPC/dev.tsv"}),
    ],
)
def test_glue_tsv_to_mds_round_trips(tmp_path: Path, task: str, files: dict[str, str]) -> None:
    splits = [x for split, f in files.items() for x in ("--split", f"{split}={GLUE / f}")]
    assert xfm(["task-data", "glue", "--task", task, *splits, "--out", str(tmp_path)]) == 0
    for split, f in files.items():
        mds = tmp_path / "mds" / f"glue_{task}_{split}"
        assert is_mds(mds)
        assert read_glue_mds(mds) == read_glue_tsv(GLUE / f, task)
    # the GLUE task reads the MDS folder in place of the TSV, batch for batch
    glue = get_task("glue", {"glue_task": task})
    tok = _tokenizer(tmp_path / "tok")
    split, f = next(iter(files.items()))
    section = TaskDataSection(max_tokens=32)
    a = glue._data(section, str(GLUE / f), tok)
    b = glue._data(section, str(tmp_path / "mds" / f"glue_{task}_{split}"), tok)
    ba, bb = next(iter(a.loader(8))), next(iter(b.loader(8)))
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)


def _tokenizer(out: Path):
    """A small real BPE tokenizer trained on the GLUE fixture sentences."""
    from xfm.text.tokenizer import load_tokenizer
    from xfm.train.data.synth.tokenizer import train_bpe_tokenizer

    texts = [line for f in GLUE.rglob("*.tsv") for line in f.read_text().splitlines()]
    return load_tokenizer(str(train_bpe_tokenizer(texts, out, vocab_size=300)))


# ----------------------------------------------------------------------------- bad inputs
def _bad_questions(tmp_path: Path, mutate) -> Path:
    data = json.loads((VQA / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    mutate(data["questions"])
    path = tmp_path / "bad_questions.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda qs: qs[1].pop("question"), "question"),
        (lambda qs: qs[0].update(question=7), "question"),
        (lambda qs: qs[0].update(image_id="forty-two"), "image_id"),
    ],
)
def test_malformed_vqa_input_names_file_and_field(tmp_path: Path, capsys, mutate, field) -> None:
    bad = _bad_questions(tmp_path, mutate)
    args = ["task-data", "vqa_v2", "--split", f"val={bad}", "--format", "mds"]
    assert xfm([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and repr(field) in err, err
    assert not (tmp_path / "o" / "mds" / "vqa_val").exists()


def test_malformed_karpathy_and_glue_name_file_and_field(tmp_path: Path, capsys) -> None:
    data = json.loads(KARPATHY.read_text())
    data["images"][1]["sentences"][0].pop("raw")
    bad = tmp_path / "dataset_coco.json"
    bad.write_text(json.dumps(data))
    out = str(tmp_path / "o")
    assert xfm(["task-data", "captions", "--ann", str(bad), "--format", "mds", "--out", out]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "images[1].sentences[0]" in err and "'raw'" in err
    tsv = tmp_path / "dev.tsv"
    lines = (GLUE / "STS-B/dev.tsv").read_text().splitlines()
    tsv.write_text("\n".join([lines[0], lines[1].rsplit("\t", 1)[0] + "\tfive", *lines[2:]]))
    args = ["task-data", "glue", "--task", "stsb", "--split", f"dev={tsv}", "--out", out]
    assert xfm(args) == 2
    err = capsys.readouterr().err
    assert f"{tsv}:2" in err and "five" in err


def test_writer_and_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"src\.json: entry #1: field 'answer' must be a list"):
        write_task_mds(
            "vqa",
            [
                {"question_id": 1, "image": "a.jpg", "question": "q?", "answer": ["x"]},
                {"question_id": 2, "image": "a.jpg", "question": "q?", "answer": "x"},
            ],
            tmp_path / "v",
            source="src.json",
        )
    assert not (tmp_path / "v").exists()
    with pytest.raises(ValueError, match=r"entry #0: field 'image': image file not found"):
        write_task_mds(
            "caption",
            [{"image": "missing.jpg", "image_id": 1, "caption": "c"}],
            tmp_path / "c",
            image_root=tmp_path,
        )
    rows = [{"text": "a", "pair": None, "label": 1.0}, {"text": "b", "pair": "c", "label": 0.5}]
    write_task_mds("glue", rows, tmp_path / "g", compression="zstd")
    table = MDSTable(tmp_path / "g", "glue")
    assert list(table) == rows and type(table[0]["label"]) is float
    with pytest.raises(ValueError, match=r"has columns \['label', 'pair', 'text'\]; a 'vqa'"):
        MDSTable(tmp_path / "g", "vqa")
    with pytest.raises(FileNotFoundError, match="not an MDS folder"):
        MDSTable(tmp_path, "glue")
