"""GLUE with the language encoder alone (``xfm finetune glue`` / ``xfm eval glue``).

Model: :class:`~xfm.tasks.classification.TextClassifier` (language encoder + ``cls_head`` on
the ``<s>`` state; MSE regression for STS-B). Data: the GLUE TSV files as distributed
(``{TASK}/train.tsv``, ``dev.tsv``, ``dev_matched.tsv``...), read by column name
(:data:`GLUE_FORMATS`), or their MDS conversion (``xfm task-data glue``, a folder with
``index.json``); sentence pairs are tokenised as ``<s> A </s></s> B </s>``. Metrics:
:func:`~xfm.tasks.glue_metrics.glue_metrics` (scikit-learn / SciPy).

Synthetic shape-text sets in the same TSV layouts (:func:`write_glue_synthetic`): ``sst2``
(does the caption mention a circle?), ``rte`` (is "there is a <colour> <shape>" entailed by a
scene caption? negatives name a colour or a shape absent from the scene) and ``stsb``
(similarity 0..5 = 5 x Jaccard overlap of the two scenes' coloured shapes).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xfm.tasks.base import Task, TaskData, TaskDataSection, collect_outputs
from xfm.tasks.classification import TextClassifier
from xfm.tasks.glue_metrics import GLUE_METRICS, glue_metrics
from xfm.tasks.task_mds import is_mds, read_glue_mds
from xfm.train.engine import unwrap

__all__ = ["GLUE_FORMATS", "GLUEFormat", "GLUETask", "read_glue_tsv", "write_glue_synthetic"]


@dataclass(frozen=True)
class GLUEFormat:
    """Columns of a GLUE TSV: ``text`` / ``pair`` / ``label`` (names, or indices without header)
    and the label vocabulary (``None``: a float score)."""

    text: str | int
    pair: str | int | None
    label: str | int
    labels: tuple[str, ...] | None
    header: bool = True


GLUE_FORMATS: dict[str, GLUEFormat] = {
    "cola": GLUEFormat(3, None, 1, ("0", "1"), header=False),
    "sst2": GLUEFormat("sentence", None, "label", ("0", "1")),
    "mrpc": GLUEFormat("#1 String", "#2 String", "Quality", ("0", "1")),
    "stsb": GLUEFormat("sentence1", "sentence2", "score", None),
    "qqp": GLUEFormat("question1", "question2", "is_duplicate", ("0", "1")),
    "mnli": GLUEFormat(
        "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction")
    ),
    "qnli": GLUEFormat("question", "sentence", "label", ("entailment", "not_entailment")),
    "rte": GLUEFormat("sentence1", "sentence2", "label", ("entailment", "not_entailment")),
}


def read_glue_tsv(path: str | os.PathLike[str], task: str) -> list[tuple[str, str | None, float]]:
    """``[(text, pair or None, label id or score)]`` of a GLUE TSV file."""
    if task not in GLUE_FORMATS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_FORMATS)}")
    fmt = GLUE_FORMATS[task]
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GLUE {task} file {str(p)!r} does not exist")
    with p.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if fmt.header:
        if not rows:
            raise ValueError(f"{p}: empty file, expected a header row")
        header, rows = rows[0], rows[1:]
        cols = {name: i for i, name in enumerate(header)}
        wanted = [c for c in (fmt.text, fmt.pair, fmt.label) if c is not None]
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise ValueError(f"{p}: GLUE {task} needs columns {wanted}; header has {header}")
        idx = {c: cols[c] for c in wanted}
    else:
        idx = {c: int(c) for c in (fmt.text, fmt.pair, fmt.label) if c is not None}
    out = []
    for n, row in enumerate(rows, start=2 if fmt.header else 1):
        if len(row) <= max(idx.values()):
            raise ValueError(f"{p}:{n}: {len(row)} columns, expected > {max(idx.values())}")
        raw = row[idx[fmt.label]]
        if fmt.labels is None:
            try:
                label = float(raw)
            except ValueError:
                raise ValueError(
                    f"{p}:{n}: column {fmt.label!r} must be a number (the {task} score); got "
                    f"{raw!r}"
                ) from None
        elif raw in fmt.labels:
            label = float(fmt.labels.index(raw))
        else:
            raise ValueError(f"{p}:{n}: label {raw!r} is not one of {list(fmt.labels)}")
        pair = row[idx[fmt.pair]] if fmt.pair is not None else None
        out.append((row[idx[fmt.text]], pair, label))
    return out


# ------------------------------------------------------------------------------ synthetic
def _scene_words(rng: np.random.Generator) -> tuple[str, set[tuple[str, str]]]:
    from xfm.train.data.synth import captions, sample_scene

    scene = sample_scene(rng, 64)
    caps = captions(scene)
    return caps[int(rng.integers(len(caps)))], {(s.color, s.shape) for s in scene.shapes}


def _synthetic_rows(task: str, rng: np.random.Generator) -> tuple[list[str], Any]:
    from xfm.train.data.synth import COLORS, SHAPES

    if task == "sst2":
        text, objs = _scene_words(rng)
        return [text, str(int(any(k == "circle" for _, k in objs)))], None
    if task == "rte":
        text, objs = _scene_words(rng)
        if rng.random() < 0.5:
            c, k = sorted(objs)[int(rng.integers(len(objs)))]
        else:  # a colour or a shape that is not in the scene at all (no binding needed)
            while True:
                c = list(COLORS)[int(rng.integers(len(COLORS)))]
                k = SHAPES[int(rng.integers(len(SHAPES)))]
                if c not in {o[0] for o in objs} or k not in {o[1] for o in objs}:
                    break
        label = "entailment" if (c, k) in objs else "not_entailment"
        return [text, f"there is a {c} {k}", label], None
    if task == "stsb":
        (a, oa), (b, ob) = _scene_words(rng), _scene_words(rng)
        score = 5.0 * len(oa & ob) / len(oa | ob)
        return [a, b, f"{score:.3f}"], None
    raise ValueError(f"synthetic GLUE exists for sst2, rte and stsb; got {task!r}")


_SYNTH_HEADER = {
    "sst2": ["sentence", "label"],
    "rte": ["sentence1", "sentence2", "label"],
    "stsb": ["sentence1", "sentence2", "score"],
}


def write_glue_synthetic(
    out: str | os.PathLike[str], task: str, num_train: int = 2000, num_dev: int = 300, seed: int = 0
) -> Path:
    """Write ``out/train.tsv`` and ``out/dev.tsv`` of a shape-text ``task`` in GLUE format."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for split, count, salt in (("train", num_train, 0), ("dev", num_dev, 1)):
        rng = np.random.default_rng([seed, salt])
        rows = [_synthetic_rows(task, rng)[0] for _ in range(count)]
        if task == "stsb":  # index columns like the real file
            rows = [[str(i), "synth", *r] for i, r in enumerate(rows)]
            header = ["index", "genre", *_SYNTH_HEADER[task]]
        elif task == "rte":
            rows = [[str(i), *r] for i, r in enumerate(rows)]
            header = ["index", *_SYNTH_HEADER[task]]
        else:
            header = _SYNTH_HEADER[task]
        tmp = root / f"{split}.tsv.tmp"
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        os.replace(tmp, root / f"{split}.tsv")
    return root


# ----------------------------------------------------------------------------------- task
class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[tuple[str, str | None, float]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[str, str | None, float]:
        return self.rows[i]


class GLUETask(Task):
    """One GLUE task. Options: ``glue_task`` (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte),
    ``synthetic`` (``{out, num_train, num_dev, seed}``: write the shape-text set there when
    missing; ``{synthetic}`` in data paths expands to ``out``)."""

    name: ClassVar[str] = "glue"
    metric: ClassVar[str] = "main"
    official_layout: ClassVar[str | None] = "classification_glue"
    default_options: ClassVar[dict[str, Any]] = {"glue_task": "rte", "synthetic": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["glue_task"] not in GLUE_FORMATS:
            raise ValueError(
                f"options.glue_task must be one of {sorted(GLUE_FORMATS)}; got "
                f"{self.options['glue_task']!r}"
            )

    @property
    def num_labels(self) -> int:
        labels = GLUE_FORMATS[self.options["glue_task"]].labels
        return 1 if labels is None else len(labels)

    def build_model(self, model_config: Mapping[str, Any]) -> TextClassifier:
        return TextClassifier(dict(model_config.get("text", {"name": "roberta"})), self.num_labels)

    def _path(self, data: TaskDataSection, path: str) -> str:
        syn = self.options["synthetic"]
        if syn is not None and "{synthetic}" in path:
            out = str(syn.get("out", "data/glue_synth"))
            if not (Path(out) / "dev.tsv").is_file():
                write_glue_synthetic(
                    out,
                    self.options["glue_task"],
                    int(syn.get("num_train", 2000)),
                    int(syn.get("num_dev", 300)),
                    int(syn.get("seed", 0)),
                )
            path = path.replace("{synthetic}", out)
        return data.expand(path)

    def _data(self, data: TaskDataSection, path: str, tokenizer: Any) -> TaskData:
        path = self._path(data, path)
        if is_mds(path):
            rows = read_glue_mds(path)
        else:
            rows = read_glue_tsv(path, self.options["glue_task"])
        regression = self.num_labels == 1

        def collate(batch: list[Any]) -> dict[str, torch.Tensor]:
            texts = [t for t, _, _ in batch]
            pairs = [p for _, p, _ in batch] if batch[0][1] is not None else None
            enc = tokenizer(texts, pairs, max_tokens=data.max_tokens, padding="longest")
            labels = torch.tensor([y for *_, y in batch])
            return {
                "ids": enc.input_ids,
                "mask": enc.attention_mask,
                "label": labels.float() if regression else labels.long(),
            }

        return TaskData(_Rows(rows), collate)

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, tokenizer)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        return self._data(data, data.eval[split], tokenizer)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        net = unwrap(model)
        logits = model(batch["ids"], batch["mask"])
        loss = net.loss(logits.float(), batch["label"])
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            logits = model(batch["ids"], batch["mask"]).float()
            pred = logits.view(-1) if self.num_labels == 1 else logits.argmax(-1)
            return {"pred": pred, "label": batch["label"]}

        out = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device or next(model.parameters()).device,
            autocast=autocast,
            progress=progress,
            desc="GLUE eval",
        )
        pred, gold = out["pred"].cpu().numpy(), out["label"].cpu().numpy()
        task = self.options["glue_task"]
        out = glue_metrics(task, pred, gold)
        out = {"main": out[GLUE_METRICS[task][0]], **out}
        if self.num_labels > 1:
            out["majority"] = 100.0 * Counter(gold.tolist()).most_common(1)[0][1] / len(gold)
        out["examples"] = float(len(gold))
        return out
