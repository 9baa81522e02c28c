"""Task annotations as MDS shards (mosaicml-streaming), written by ``xfm task-data`` and read by
the VQA, captioning and GLUE task datasets in place of their JSON / TSV files.

One MDS folder per split. The columns of each kind (:data:`TASK_COLUMNS`) are the fields of the
task JSON entries, so a row read back is the JSON entry itself; ``image_bytes`` (VQA,
captioning) holds the encoded image when the converter was given the image folder (empty
otherwise: the image is then read from ``data.root`` / ``image`` as with JSON).

============  ==================================================================================
kind          columns
============  ==================================================================================
``vqa``       ``question_id`` (json: int or str), ``image`` (str: path), ``question`` (str),
              ``answer`` (json: the human answers, ``null`` for a split without answers),
              ``image_bytes`` (bytes)
``caption``   ``image`` (str), ``image_id`` (json), ``caption`` (json: a caption or the list of
              references), ``image_bytes`` (bytes)
``glue``      ``text`` (str), ``pair`` (json: str or ``null``), ``label`` (float64: class index
              or STS-B score)
============  ==================================================================================

A data path that is a folder holding ``index.json`` is read as MDS (:func:`is_mds`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TASK_COLUMNS",
    "MDSTable",
    "check_item",
    "is_mds",
    "read_glue_mds",
    "write_task_mds",
]

TASK_COLUMNS: dict[str, dict[str, str]] = {
    "vqa": {
        "question_id": "json",
        "image": "str",
        "question": "str",
        "answer": "json",
        "image_bytes": "bytes",
    },
    "caption": {"image": "str", "image_id": "json", "caption": "json", "image_bytes": "bytes"},
    "glue": {"text": "str", "pair": "json", "label": "float64"},
}

#: Columns that may be absent from an entry (stored as ``null`` / empty, dropped on reading).
_OPTIONAL = {"answer", "image_bytes", "image_id"}


def is_mds(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an MDS folder (holds ``index.json``)."""
    return Path(path, "index.json").is_file()


def _kind(kind: str) -> dict[str, str]:
    if kind not in TASK_COLUMNS:
        raise ValueError(f"unknown task MDS kind {kind!r}; expected one of {sorted(TASK_COLUMNS)}")
    return TASK_COLUMNS[kind]


def _fail(where: str, field: str, expected: str, value: Any) -> ValueError:
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    return ValueError(
        f"{where}: field {field!r} must be {expected}; got {type(value).__name__} {shown}"
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def check_item(kind: str, item: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` (file and entry) and the field when ``item`` does
    not fit the ``kind`` columns."""
    columns = _kind(kind)
    missing = [c for c in columns if c not in item and c not in _OPTIONAL]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; got {sorted(item)}")
    unknown = sorted(set(item) - set(columns))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {sorted(columns)}")
    if kind == "vqa":
        qid = item["question_id"]
        if not isinstance(qid, int | str) or isinstance(qid, bool):
            raise _fail(where, "question_id", "an int or a string", qid)
        if "answer" in item and not _strings(item["answer"]):
            raise _fail(where, "answer", "a list of strings", item["answer"])
    elif kind == "caption":
        cap = item["caption"]
        if not (isinstance(cap, str) or (_strings(cap) and cap)):
            raise _fail(where, "caption", "a string or a non-empty list of strings", cap)
        iid = item.get("image_id", "")
        if not isinstance(iid, int | str) or isinstance(iid, bool):
            raise _fail(where, "image_id", "an int or a string", iid)
    else:
        if item["pair"] is not None and not isinstance(item["pair"], str):
            raise _fail(where, "pair", "a string or null", item["pair"])
        label = item["label"]
        if (
            not isinstance(label, int | float)
            or isinstance(label, bool)
            or not math.isfinite(label)
        ):
            raise _fail(where, "label", "a finite number", label)
    for name, enc in columns.items():
        if enc == "str" and not isinstance(item[name], str):
            raise _fail(where, name, "a string", item[name])
        if enc == "str" and name == "image" and not item[name]:
            raise _fail(where, name, "a non-empty image path", item[name])
    if "image_bytes" in item and not isinstance(item["image_bytes"], bytes):
        raise _fail(where, "image_bytes", "bytes", item["image_bytes"])


def write_task_mds(
    kind: str,
    items: Iterable[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    source: str = "<items>",
    image_root: str | os.PathLike[str] | None = None,
    compression: str | None = None,
) -> int:
    """Write task entries as one MDS folder ``out`` (replaced atomically); returns the count.

    Args:
        kind: ``vqa``, ``caption`` or ``glue``.
        items: task JSON entries (see :data:`TASK_COLUMNS`).
        source: how to name the input in errors (the converted file).
        image_root: folder the ``image`` paths are relative to; its files are stored in
            ``image_bytes`` (a missing or undecodable image is an error naming it).
        compression: shard compression understood by streaming (``zstd``...), none by default.
    """
    from streaming import MDSWriter

    columns = _kind(kind)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with MDSWriter(out=str(tmp), columns=dict(columns), compression=compression) as writer:
        for n, item in enumerate(items):
            where = f"{source}: entry #{n}"
            check_item(kind, item, where)
            row = dict(item)
            if kind == "vqa":
                row.setdefault("answer", None)
            if kind == "caption":
                row.setdefault("image_id", None)
            if "image_bytes" in columns:
                row.setdefault("image_bytes", b"")
                if image_root is not None:
                    row["image_bytes"] = _image_bytes(Path(image_root), item["image"], where)
            writer.write(row)
            count += 1
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return count


def _image_bytes(root: Path, rel: str, where: str) -> bytes:
    from xfm.train.data.errors import BadSampleError
    from xfm.train.data.images import read_image_file

    try:
        return read_image_file(root / rel)[0]
    except BadSampleError as err:
        raise ValueError(f"{where}: field 'image': {err}") from err


class MDSTable(torch.utils.data.Dataset):
    """Rows of a task MDS folder as the task JSON entries (map-style, read lazily).

    ``table[i]`` is a dict of the ``kind`` columns; absent optional fields (``answer`` of a
    split without answers, empty ``image_bytes``) are left out, so a row equals the JSON
    entry it was written from.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, what: str = "task data") -> None:
        from xfm.train.data.streaming_compat import reader_from_json

        self.path = Path(path)
        self.kind = kind
        columns = _kind(kind)
        if not is_mds(self.path):
            raise FileNotFoundError(
                f"{what} {str(self.path)!r} is not an MDS folder (no index.json)"
            )
        try:
            index = json.loads((self.path / "index.json").read_text())
            shards = index["shards"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{what} {self.path}/index.json is not an MDS index: {err}") from err
        self.shards = []
        for info in shards:
            shard = reader_from_json(str(self.path), "", info)
            names = list(getattr(shard, "column_names", []))
            if sorted(names) != sorted(columns):
                raise ValueError(
                    f"{what} {str(self.path)!r} has columns {sorted(names)}; a {kind!r} task MDS "
                    f"needs {sorted(columns)}"
                )
            self._decompress(shard)
            self.shards.append(shard)
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + int(shard.samples))

    def _decompress(self, shard: Any) -> None:
        """Unpack a compressed shard next to its archive (once)."""
        raw = self.path / shard.raw_data.basename
        if raw.is_file() or shard.zip_data is None:
            return
        from xfm.train.data.streaming_compat import decompress

        data = decompress(shard.compression, (self.path / shard.zip_data.basename).read_bytes())
        part = raw.with_name(raw.name + f".{os.getpid()}.tmp")
        part.write_bytes(data)
        os.replace(part, raw)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)} in {self.path}")
        s = next(k for k in range(len(self.shards)) if i < self.offsets[k + 1])
        row = dict(self.shards[s].get_item(i - self.offsets[s]))
        for name, value in row.items():
            if isinstance(value, np.generic):  # numeric columns decode to numpy scalars
                row[name] = value.item()
        for name in _OPTIONAL:
            if name in row and (row[name] is None or row[name] == b""):
                del row[name]
        return row

    def __iter__(self):  # type: ignore[override]
        return (self[i] for i in range(len(self)))


def read_glue_mds(path: str | os.PathLike[str]) -> list[tuple[str, str | None, float]]:
    """``[(text, pair or None, label)]`` of a ``glue`` MDS folder (as :func:`read_glue_tsv`)."""
    table = MDSTable(path, "glue", "GLUE data")
    return [(r["text"], r["pair"], float(r["label"])) for r in table]
