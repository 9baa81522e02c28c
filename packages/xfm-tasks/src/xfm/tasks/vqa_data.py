"""Converters from the official VQA v2 and COCO Karpathy caption files to the task JSON.

* :func:`convert_vqa_v2`: ``v2_OpenEnded_mscoco_<split>_questions.json`` (+ the
  ``v2_mscoco_<split>_annotations.json`` when the split has answers) ->
  ``[{"question_id", "image", "question", "answer": [10 human answers]}]`` with image paths
  ``<split>/COCO_<split>_<image_id:012d>.jpg`` (the layout of the COCO image zips).
* :func:`build_answer_list`: the ``top_k`` most frequent answers (official list: 3,128 answers)
  from converted training entries.
* :func:`convert_karpathy`: Karpathy's ``dataset_coco.json`` -> training entries (one per
  caption; ``restval`` counts as training) and evaluation entries with their reference lists.

All writers are atomic (``*.tmp`` then rename).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xfm.tasks.vqa_metrics import normalize_answer

__all__ = ["build_answer_list", "convert_karpathy", "convert_vqa_v2", "write_json"]


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Atomically write ``obj`` as JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, out)
    return out


def _load(path: str | os.PathLike[str], key: str, what: str) -> tuple[dict, list[dict]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {str(p)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or key not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{what} file {str(p)!r} must be an object with {key!r}; got {got}")
    if not isinstance(data[key], list) or not all(isinstance(x, dict) for x in data[key]):
        raise ValueError(f"{what} file {str(p)!r}: field {key!r} must be a list of objects")
    return data, data[key]


def _bad(path: Any, where: str, field: str, expected: str, value: Any) -> ValueError:
    return ValueError(
        f"{path}: {where}: field {field!r} must be {expected}; got {type(value).__name__} "
        f"{value!r:.60}"
    )


def convert_vqa_v2(
    questions: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Official VQA v2 question (+ annotation) files -> task entries (written to ``out``)."""
    info, qs = _load(questions, "questions", "VQA questions")
    subtype = str(info.get("data_subtype", "train2014"))
    answers: dict[int, list[str]] = {}
    if annotations is not None:
        _, anns = _load(annotations, "annotations", "VQA annotations")
        for n, a in enumerate(anns):
            where = f"annotations[{n}]"
            missing = [k for k in ("question_id", "answers") if k not in a]
            if missing:
                raise ValueError(f"{annotations}: {where}: missing field(s) {missing}")
            if not isinstance(a["answers"], list) or not all(
                isinstance(x, dict) and isinstance(x.get("answer"), str) for x in a["answers"]
            ):
                raise _bad(annotations, where, "answers", "a list of {'answer': str}", a["answers"])
            answers[_int(a["question_id"], annotations, where, "question_id")] = [
                x["answer"] for x in a["answers"]
            ]
    items = []
    for n, q in enumerate(qs):
        where = f"questions[{n}]"
        missing = [k for k in ("question_id", "image_id", "question") if k not in q]
        if missing:
            raise ValueError(f"{questions}: {where}: missing field(s) {missing}")
        qid = _int(q["question_id"], questions, where, "question_id")
        image_id = _int(q["image_id"], questions, where, "image_id")
        if not isinstance(q["question"], str) or not q["question"].strip():
            raise _bad(questions, where, "question", "a non-empty string", q["question"])
        item: dict[str, Any] = {
            "question_id": qid,
            "image": f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg",
            "question": q["question"],
        }
        if annotations is not None:
            if qid not in answers:
                raise ValueError(
                    f"{questions}: {where}: question_id {qid} has no entry in {annotations}"
                )
            item["answer"] = answers[qid]
        items.append(item)
    if out is not None:
        write_json(items, out)
    return items


def _int(value: Any, path: Any, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(path, where, field, "an integer", value)
    try:
        return int(value)
    except ValueError:
        raise _bad(path, where, field, "an integer", value) from None


def build_answer_list(
    items: Iterable[dict[str, Any]], top_k: int = 3128, out: str | os.PathLike[str] | None = None
) -> list[str]:
    """The ``top_k`` most frequent (normalised) answers, most frequent first (ties by name)."""
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(normalize_answer(a) for a in item.get("answer", []))
    answers = [a for a, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:top_k] if a]
    if out is not None:
        write_json(answers, out)
    return answers


def convert_karpathy(
    dataset: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Karpathy ``dataset_coco.json`` -> ``{"train": [...], "val": [...], "test": [...]}``.

    Training entries ``{"image", "image_id", "caption": str}``; evaluation entries
    ``{"image", "image_id", "caption": [references]}``. Written to ``out_dir/coco_karpathy_
    <split>.json`` when given.
    """
    _, images = _load(dataset, "images", "Karpathy dataset")
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for n, im in enumerate(images):
        where = f"images[{n}]"
        missing = [k for k in ("filepath", "filename", "split", "sentences") if k not in im]
        if missing:
            raise ValueError(f"{dataset}: {where}: missing field(s) {missing}")
        path = f"{im['filepath']}/{im['filename']}"
        image_id = im.get("cocoid", im.get("imgid", n))
        if not isinstance(im["sentences"], list) or not im["sentences"]:
            raise _bad(dataset, where, "sentences", "a non-empty list", im["sentences"])
        caps = []
        for k, sent in enumerate(im["sentences"]):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if not isinstance(raw, str):
                raise _bad(dataset, f"{where}.sentences[{k}]", "raw", "a string", raw)
            caps.append(raw.strip())
        split = "train" if im["split"] in ("train", "restval") else im["split"]
        if split not in splits:
            raise ValueError(
                f"{dataset}: {where}: field 'split' must be train, restval, val or test; got "
                f"{im['split']!r}"
            )
        if split == "train":
            splits["train"] += [{"image": path, "image_id": image_id, "caption": c} for c in caps]
        else:
            splits[split].append({"image": path, "image_id": image_id, "caption": caps})
    if out_dir is not None:
        for split, entries in splits.items():
            write_json(entries, Path(out_dir) / f"coco_karpathy_{split}.json")
    return splits
