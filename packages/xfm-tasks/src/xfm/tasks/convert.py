"""Converters from the official downstream annotation formats (``xfm task-data FORMAT ...``).

Each converter writes the task JSON the task datasets read (the X-VLM / X-FM layouts, one file
per split) and/or MDS shards (mosaicml-streaming):

==============  =====================================  ======================================
format          input                                  output
==============  =====================================  ======================================
``karpathy``    ``dataset_coco.json`` /                ``retrieval_{split}.json``:
                ``dataset_flickr30k.json`` (Karpathy)  ``{"image", "caption": [..], "image_id"}``;
                                                       with ``--image-root``: ``image_text``
                                                       MDS of the training split
``nlvr2``       NLVR2 ``{train,dev,test1}.json``       ``nlvr_{split}.json``:
                (JSON lines: ``identifier``,           ``{"images": [img0, img1], "sentence",
                ``sentence``, ``label``, ``directory``) "label"}``; with ``--image-root``:
                                                       ``nlvr`` MDS of the training split
``refcoco``     REFER ``refs(unc).p`` +                ``refcoco_{split}.json``:
                ``instances.json`` (RefCOCO+)          ``{"ref_id", "image", "image_id",
                                                       "text", "bbox": [x, y, w, h]}``; with
                                                       ``--image-root``: ``region`` MDS
``vqa_v2``      ``v2_OpenEnded_mscoco_*_questions``    ``vqa_{split}.json`` (+ ``vqa_answers.
                (``--split S=FILE``) + annotations     json`` from ``train``) and/or
                (``--annotations S=FILE``)             ``mds/vqa_{split}`` (``vqa`` task MDS)
``captions``    Karpathy ``dataset_coco.json``         ``coco_karpathy_{split}.json`` and/or
                                                       ``mds/coco_karpathy_{split}``
                                                       (``caption`` task MDS)
``glue``        GLUE TSV (``--task mnli --split        ``mds/glue_{task}_{split}`` (``glue``
                train=train.tsv ...``)                 task MDS; the TSV is the JSON-side
                                                       format)
==============  =====================================  ======================================

``--format json|mds|both`` selects the outputs of ``vqa_v2`` / ``captions`` (default ``json``;
``glue``: ``mds``). The task MDS columns are the task JSON fields (:mod:`xfm.tasks.task_mds`);
with ``--image-root`` the images are stored in the shards too. The task datasets read a split
from either (a data path that is a folder with ``index.json`` is MDS).

The REFER ``refs`` pickle is read with an unpickler that only builds plain containers,
numbers and strings (no code runs).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xfm.core.cli import Command

__all__ = [
    "TaskDataCommand",
    "convert_captions",
    "convert_glue",
    "convert_karpathy",
    "convert_nlvr2",
    "convert_refcoco",
    "convert_vqa_v2_splits",
    "load_refs_pickle",
    "write_nlvr_mds",
]


def _write_json(path: Path, items: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(items, indent=1))
    tmp.replace(path)
    return str(path)


def _load_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {str(p)!r} is not valid JSON: {err}") from err


# ----------------------------------------------------------------------------- retrieval
def convert_karpathy(
    ann: str | Path,
    out: str | Path,
    image_root: str | Path | None = None,
    splits: Iterable[str] = ("train", "val", "test"),
) -> dict[str, str]:
    """Karpathy-split JSON -> ``out/retrieval_{split}.json`` (``restval`` joins ``train``);
    with ``image_root`` also ``out/mds/retrieval_train`` (``image_text`` MDS, one sample per
    caption). Returns ``{split: path}``."""
    data = _load_json(ann, "Karpathy annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{ann}: expected Karpathy's JSON with an 'images' list")
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n, e in enumerate(data["images"]):
        if "filename" not in e or "sentences" not in e or "split" not in e:
            raise ValueError(
                f"{ann}: images[{n}] lacks filename / sentences / split; got {sorted(e)}"
            )
        split = "train" if e["split"] == "restval" else e["split"]
        caps = [s.get("raw", " ".join(s.get("tokens", []))).strip() for s in e["sentences"]]
        by_split[split].append(
            {
                "image": f"{e.get('filepath', '')}/{e['filename']}".lstrip("/"),
                "caption": [c for c in caps if c],
                "image_id": str(e.get("cocoid", e.get("imgid", n))),
            }
        )
    out = Path(out)
    written = {s: _write_json(out / f"retrieval_{s}.json", by_split[s]) for s in splits}
    if image_root is not None and by_split["train"]:
        from xfm.train.data.prepare import read_xvlm_json, write_all

        summary = write_all(
            "image_text",
            read_xvlm_json(written["train"], image_root),
            str(out / "mds" / "retrieval_train"),
            progress=False,
        )
        written["mds/train"] = f"{out / 'mds' / 'retrieval_train'} ({summary.written} pairs)"
    return written


# -------------------------------------------------------------------------------- NLVR2
def _nlvr_images(entry: dict[str, Any], split: str) -> list[str]:
    """``dev-850-0-0`` -> ``dev/dev-850-0-img0.png`` (train: ``train/<directory>/...``)."""
    ident = entry["identifier"]
    stem = ident.rsplit("-", 1)[0]
    folder = f"{split}/{entry['directory']}" if "directory" in entry and split == "train" else split
    return [f"{folder}/{stem}-img{i}.png" for i in (0, 1)]


def convert_nlvr2(
    files: dict[str, str | Path], out: str | Path, image_root: str | Path | None = None
) -> dict[str, str]:
    """NLVR2 JSON-lines files ``{split: path}`` -> ``out/nlvr_{split}.json``; with
    ``image_root`` also ``out/mds/nlvr_train`` (:func:`write_nlvr_mds`)."""
    out = Path(out)
    written = {}
    for split, path in files.items():
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"NLVR2 {split} file {str(p)!r} does not exist")
        items = []
        for n, line in enumerate(p.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}:{n + 1}: not a JSON line: {err}") from err
            missing = [k for k in ("identifier", "sentence", "label") if k not in e]
            if missing:
                raise ValueError(f"{p}:{n + 1}: missing {missing}")
            disk_split = "test1" if split.startswith("test") else split
            items.append(
                {
                    "images": _nlvr_images(e, disk_split),
                    "sentence": e["sentence"],
                    "label": str(e["label"]),
                    "identifier": e["identifier"],
                }
            )
        written[split] = _write_json(out / f"nlvr_{split}.json", items)
    if image_root is not None and "train" in written:
        n = write_nlvr_mds(
            json.loads(Path(written["train"]).read_text()), image_root, out / "mds" / "nlvr_train"
        )
        written["mds/train"] = f"{out / 'mds' / 'nlvr_train'} ({n} samples)"
    return written


def write_nlvr_mds(items: list[dict[str, Any]], image_root: str | Path, out: str | Path) -> int:
    """MDS shards with columns ``id``, ``image0``, ``image1`` (bytes), ``sentence``, ``label``
    (int 0/1); samples whose images are missing are skipped. Returns the count written."""
    from streaming import MDSWriter

    from xfm.tasks.nlvr import parse_label
    from xfm.train.data.errors import BadSampleError
    from xfm.train.data.images import read_image_file

    columns = {"id": "str", "image0": "bytes", "image1": "bytes", "sentence": "str", "label": "int"}
    count = 0
    with MDSWriter(out=str(out), columns=columns, exist_ok=True) as writer:
        for n, e in enumerate(items):
            try:
                pair = [read_image_file(Path(image_root) / p)[0] for p in e["images"]]
            except BadSampleError:
                continue
            writer.write(
                {
                    "id": str(e.get("identifier", n)),
                    "image0": pair[0],
                    "image1": pair[1],
                    "sentence": e["sentence"],
                    "label": parse_label(e["label"], f"item {n}"),
                }
            )
            count += 1
    return count


# ------------------------------------------------------------------------------ RefCOCO+
class _PlainUnpickler(pickle.Unpickler):
    """Only plain containers and scalars: any class reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a REFER refs file holds only lists/dicts"
        )


def load_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """The ``refs(unc).p`` list of a REFER dataset, read without running code."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"REFER refs file {str(p)!r} does not exist")
    refs = _PlainUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
    if not isinstance(refs, list):
        raise ValueError(f"{p}: expected a list of refs, got {type(refs).__name__}")
    return refs


def convert_refcoco(
    refs: str | Path,
    instances: str | Path,
    out: str | Path,
    image_prefix: str = "coco/train2014",
    image_root: str | Path | None = None,
    name: str = "refcoco",
) -> dict[str, str]:
    """REFER ``refs`` + ``instances.json`` -> ``out/{name}_{split}.json`` (one entry per
    sentence, with the referred annotation's box in pixels); with ``image_root`` also
    ``out/mds/{name}_train`` (``region`` MDS)."""
    ref_list = load_refs_pickle(refs) if str(refs).endswith(".p") else _load_json(refs, "refs")
    inst = _load_json(instances, "instances file")
    anns = {a["id"]: a for a in inst.get("annotations", [])}
    images = {i["id"]: i for i in inst.get("images", [])}
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n, r in enumerate(ref_list):
        for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
            if key not in r:
                raise ValueError(f"{refs}: ref #{n} lacks {key!r}")
        if r["ann_id"] not in anns or r["image_id"] not in images:
            raise ValueError(f"{refs}: ref {r['ref_id']} points at a missing annotation / image")
        img = images[r["image_id"]]
        for s in r["sentences"]:
            by_split[r["split"]].append(
                {
                    "ref_id": r["ref_id"],
                    "image": f"{image_prefix}/{img['file_name']}".lstrip("/"),
                    "image_id": str(r["image_id"]),
                    "text": s.get("sent", s.get("raw", "")),
                    "bbox": [float(v) for v in anns[r["ann_id"]]["bbox"]],
                    "width": img.get("width"),
                    "height": img.get("height"),
                }
            )
    out = Path(out)
    written = {s: _write_json(out / f"{name}_{s}.json", items) for s, items in by_split.items()}
    if image_root is not None and by_split.get("train"):
        from xfm.train.data.errors import BadSampleError
        from xfm.train.data.images import read_image_file
        from xfm.train.data.prepare import write_all
        from xfm.train.data.prepare.common import Skip

        def records() -> Iterable[Any]:
            for k, e in enumerate(by_split["train"]):
                try:
                    data, (w, h) = read_image_file(Path(image_root) / e["image"])
                except BadSampleError as err:
                    yield Skip(str(err))
                    continue
                yield {
                    "id": f"{e['ref_id']}-{k}",
                    "image": data,
                    "box": e["bbox"],
                    "caption": e["text"],
                    "image_id": e["image_id"],
                    "width": w,
                    "height": h,
                }

        summary = write_all("region", records(), str(out / "mds" / f"{name}_train"), progress=False)
        written["mds/train"] = f"{out / 'mds' / f'{name}_train'} ({summary.written} regions)"
    return written


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """``["train=a.json", ...]`` -> ``{"train": "a.json"}`` (a clear error otherwise)."""
    out = {}
    for v in values:
        if "=" not in v:
            raise ValueError(f"{what} must be SPLIT=FILE; got {v!r}")
        split, path = v.split("=", 1)
        out[split] = path
    return out


def convert_vqa_v2_splits(
    questions: dict[str, str],
    annotations: dict[str, str],
    out: str | Path,
    fmt: str = "json",
    image_root: str | Path | None = None,
    answers: int = 3128,
) -> dict[str, str]:
    """Official VQA v2 files per split -> ``out/vqa_{split}.json`` and/or ``out/mds/vqa_{split}``
    (+ ``out/vqa_answers.json``, the ``answers`` most frequent training answers)."""
    from xfm.tasks.task_mds import write_task_mds
    from xfm.tasks.vqa_data import build_answer_list, convert_vqa_v2, write_json

    unknown = sorted(set(annotations) - set(questions))
    if unknown:
        raise ValueError(f"--annotations for split(s) {unknown} without --split questions")
    out = Path(out)
    written: dict[str, str] = {}
    for split, qfile in questions.items():
        items = convert_vqa_v2(qfile, annotations.get(split))
        if fmt in ("json", "both"):
            written[split] = str(write_json(items, out / f"vqa_{split}.json"))
        if fmt in ("mds", "both"):
            dest = out / "mds" / f"vqa_{split}"
            n = write_task_mds("vqa", items, dest, source=str(qfile), image_root=image_root)
            written[f"mds/{split}"] = f"{dest} ({n} questions)"
        if split == "train" and split in annotations:
            path = out / "vqa_answers.json"
            build_answer_list(items, answers, path)
            written["answers"] = str(path)
    return written


def convert_captions(
    ann: str | Path,
    out: str | Path,
    fmt: str = "json",
    image_root: str | Path | None = None,
    splits: Iterable[str] = ("train", "val", "test"),
) -> dict[str, str]:
    """Karpathy ``dataset_coco.json`` -> captioning ``out/coco_karpathy_{split}.json`` and/or
    ``out/mds/coco_karpathy_{split}`` (:func:`xfm.tasks.vqa_data.convert_karpathy`)."""
    from xfm.tasks.task_mds import write_task_mds
    from xfm.tasks.vqa_data import convert_karpathy as karpathy_captions
    from xfm.tasks.vqa_data import write_json

    by_split = karpathy_captions(ann)
    out = Path(out)
    written: dict[str, str] = {}
    for split in splits:
        if split not in by_split:
            raise ValueError(f"unknown captioning split {split!r}; expected {sorted(by_split)}")
        items = by_split[split]
        if fmt in ("json", "both"):
            written[split] = str(write_json(items, out / f"coco_karpathy_{split}.json"))
        if fmt in ("mds", "both"):
            dest = out / "mds" / f"coco_karpathy_{split}"
            n = write_task_mds("caption", items, dest, source=str(ann), image_root=image_root)
            written[f"mds/{split}"] = f"{dest} ({n} entries)"
    return written


def convert_glue(task: str, files: dict[str, str], out: str | Path) -> dict[str, str]:
    """GLUE TSV files ``{split: path}`` of ``task`` -> ``out/mds/glue_{task}_{split}``."""
    from xfm.tasks.glue import read_glue_tsv
    from xfm.tasks.task_mds import write_task_mds

    written = {}
    for split, path in files.items():
        rows = read_glue_tsv(path, task)
        items = [{"text": t, "pair": p, "label": y} for t, p, y in rows]
        dest = Path(out) / "mds" / f"glue_{task}_{split}"
        n = write_task_mds("glue", items, dest, source=str(path))
        written[f"mds/{split}"] = f"{dest} ({n} rows)"
    return written


FORMATS = ("karpathy", "nlvr2", "refcoco", "vqa_v2", "captions", "glue")


class TaskDataCommand(Command):
    """``xfm task-data {karpathy,nlvr2,refcoco,vqa_v2,captions,glue} ... --out DIR``."""

    help = "convert official downstream annotations to task JSON and/or MDS"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("format", choices=list(FORMATS))
        parser.add_argument("--ann", help="karpathy/captions: dataset_*.json; refcoco: refs(unc).p")
        parser.add_argument("--instances", help="refcoco: instances.json")
        parser.add_argument(
            "--split",
            action="append",
            default=[],
            help="nlvr2 / vqa_v2 / glue: SPLIT=FILE (repeat); karpathy/captions: splits to write",
        )
        parser.add_argument(
            "--annotations",
            action="append",
            default=[],
            help="vqa_v2: SPLIT=v2_mscoco_*_annotations.json (repeat; splits with answers)",
        )
        parser.add_argument("--task", help="glue: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte")
        parser.add_argument(
            "--format",
            dest="out_format",
            choices=["json", "mds", "both"],
            default=None,
            help="vqa_v2 / captions: task JSON, task MDS or both (default json); glue: mds",
        )
        parser.add_argument("--answers", type=int, default=3128, help="vqa_v2: answer list size")
        parser.add_argument(
            "--image-root",
            default=None,
            help="image folder: karpathy/nlvr2/refcoco write training MDS; vqa_v2/captions "
            "store the images in their MDS",
        )
        parser.add_argument("--image-prefix", default="coco/train2014", help="refcoco image folder")
        parser.add_argument("--name", default="refcoco", help="refcoco: output name (refcoco+)")
        parser.add_argument("--out", required=True, help="output folder")

    def run(self, args: argparse.Namespace) -> int:
        fmt = args.out_format
        try:
            if args.format in ("karpathy", "nlvr2", "refcoco") and fmt not in (None, "json"):
                raise ValueError(
                    f"{args.format} writes task JSON, and MDS of its training split with "
                    "--image-root; --format applies to vqa_v2, captions and glue"
                )
            if args.format == "karpathy":
                if not args.ann:
                    raise ValueError("karpathy needs --ann")
                written = convert_karpathy(
                    args.ann, args.out, args.image_root, args.split or ("train", "val", "test")
                )
            elif args.format == "nlvr2":
                pairs = dict(s.split("=", 1) for s in args.split if "=" in s)
                if not pairs:
                    raise ValueError(
                        "nlvr2 needs --split train=train.json --split dev=dev.json ..."
                    )
                written = convert_nlvr2(pairs, args.out, args.image_root)
            elif args.format == "refcoco":
                if not args.ann or not args.instances:
                    raise ValueError(
                        "refcoco needs --ann refs(unc).p and --instances instances.json"
                    )
                written = convert_refcoco(
                    args.ann,
                    args.instances,
                    args.out,
                    args.image_prefix,
                    args.image_root,
                    args.name,
                )
            elif args.format == "vqa_v2":
                questions = _pairs(args.split, "--split")
                if not questions:
                    raise ValueError(
                        "vqa_v2 needs --split train=v2_OpenEnded_mscoco_train2014_questions.json "
                        "[--annotations train=v2_mscoco_train2014_annotations.json] ..."
                    )
                written = convert_vqa_v2_splits(
                    questions,
                    _pairs(args.annotations, "--annotations"),
                    args.out,
                    fmt or "json",
                    args.image_root,
                    args.answers,
                )
            elif args.format == "captions":
                if not args.ann:
                    raise ValueError("captions needs --ann dataset_coco.json")
                written = convert_captions(
                    args.ann,
                    args.out,
                    fmt or "json",
                    args.image_root,
                    args.split or ("train", "val", "test"),
                )
            else:
                if fmt not in (None, "mds"):
                    raise ValueError("glue data is the TSV itself; it converts to --format mds")
                files = _pairs(args.split, "--split")
                if not args.task or not files:
                    raise ValueError("glue needs --task NAME and --split SPLIT=FILE.tsv ...")
                written = convert_glue(args.task, files, args.out)
        except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for split, path in written.items():
            print(f"{split:<10} {path}")
        return 0
