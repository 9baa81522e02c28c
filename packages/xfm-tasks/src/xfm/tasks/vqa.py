"""VQA v2 task (``xfm finetune vqa`` / ``xfm eval vqa``): answer generation + answer-list ranking.

Data: the annotation JSON of X-VLM / X-FM (``[{"question_id", "image", "question",
"answer": [human answers]}]``, images relative to ``data.root``) and an answer list (JSON list of
strings, option ``answer_list``). :func:`xfm.tasks.vqa_data.convert_vqa_v2` makes both from the
official VQA v2 question / annotation files; the shapes-world set ships them
(``tasks/vqa_{train,test}.json``, ``tasks/vqa_answers.json``).

Training: soft targets, every distinct human answer of a question weighted by its frequency
(official X-VLM/X-FM) or by its VQA score (``answer_weights: vqa_score``). Evaluation: rank the
answer list (top ``k_test`` by first-token probability, then decoder likelihood), official VQA
accuracy; ``result_file`` writes the submission JSON ``[{"question_id", "answer"}]``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xfm.tasks.base import Task, TaskData, TaskDataSection, collect_outputs
from xfm.tasks.base_data import ImageReader, image_source, read_task_items, require, tokenize
from xfm.tasks.decoder import DecoderConfig
from xfm.tasks.vqa_metrics import normalize_answer, soft_targets, vqa_accuracy, write_results
from xfm.tasks.vqa_model import VQAConfig, VQAModel
from xfm.train.engine import unwrap

__all__ = ["VQASet", "VQATask", "build_vqa_model", "question_type"]


def build_vqa_model(spec: Mapping[str, Any], decoder_layers: int) -> VQAModel:
    """:class:`VQAModel` from an XFM-style model dict (``text`` / ``vision`` / ``fusion``)."""
    return VQAModel(
        VQAConfig(
            text=dict(spec.get("text", {"name": "roberta"})),
            vision=dict(spec.get("vision", {"name": "beit_v2"})),
            fusion=dict(spec.get("fusion", {"name": "cross_attention"})),
            decoder={"layers": int(decoder_layers), **dict(spec.get("decoder", {}))},
        )
    )


def question_type(question: str, words: int = 3) -> str:
    """The first ``words`` words of a question (for the question-prior baseline)."""
    return " ".join(question.lower().split()[:words])


class VQASet(torch.utils.data.Dataset):
    """Items ``(image [3,S,S], question, human answers, question_id)``.

    ``items`` is a list of entries (checked here) or a lazily read task MDS table (checked
    row by row as it is read).
    """

    def __init__(self, items: Sequence[dict[str, Any]], reader: ImageReader, need_answers: bool):
        self.reader = reader
        self.need_answers = need_answers
        self.source = items
        self.rows = (
            [self._row(item, n) for n, item in enumerate(items)]
            if isinstance(items, list)
            else None
        )

    def _row(self, item: dict[str, Any], n: int) -> tuple[str | bytes, str, list[str], Any]:
        where = f"VQA annotation #{n}"
        keys = ("question_id", "image", "question") + (("answer",) if self.need_answers else ())
        require(item, keys, where)
        answers = item.get("answer", [])
        if isinstance(answers, str):
            answers = [answers]
        if self.need_answers and not answers:
            raise ValueError(f"{where}: no answers for a training question")
        return image_source(item), item["question"], list(answers), item["question_id"]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, list[str], Any]:
        row = self.rows[i] if self.rows is not None else self._row(self.source[i], i)
        image, question, answers, qid = row
        return self.reader(image, seed=i)[0], question, answers, qid


def _weights(answers: list[str], how: str) -> dict[str, float]:
    if how == "vqa_score":
        return soft_targets(answers)
    counts = Counter(answers)
    return {a: c / len(answers) for a, c in counts.items()}


class VQATask(Task):
    """VQA v2 with an answer decoder.

    Options: ``answer_list`` (JSON list; ``{synth}`` expands), ``k_test`` (first-token top-k,
    official 128), ``decoder_layers``, ``answer_weights`` (``frequency`` | ``vqa_score``),
    ``max_answer_tokens``, ``result_file`` (submission JSON written by :meth:`evaluate`),
    ``decoder_init`` (``fusion``: a pretraining ``init_from`` checkpoint initialises the answer
    decoder from its fusion encoder, the official recipe; ``none``: the decoder stays fresh).
    """

    name: ClassVar[str] = "vqa"
    metric: ClassVar[str] = "accuracy"
    official_layout: ClassVar[str | None] = "vqa"
    model_sections: ClassVar[dict[str, type]] = {"decoder": DecoderConfig}
    default_options: ClassVar[dict[str, Any]] = {
        "answer_list": "{synth}/tasks/vqa_answers.json",
        "k_test": 128,
        "decoder_layers": 2,
        "answer_weights": "frequency",
        "max_answer_tokens": 10,
        "result_file": "",
        "decoder_init": "fusion",
    }

    def build_model(self, model_config: Mapping[str, Any]) -> VQAModel:
        return build_vqa_model(model_config, self.options["decoder_layers"])

    # ------------------------------------------------------------------------ data
    def _data(self, data: TaskDataSection, path: str, what: str, train: bool, tokenizer: Any):
        items = read_task_items(data.expand(path), "vqa", what)
        reader = ImageReader(data.expand(data.root), data.image_size, train and data.augment)
        max_tokens, max_answer = data.max_tokens, self.options["max_answer_tokens"]
        how = self.options["answer_weights"]

        def collate(batch: list[Any]) -> dict[str, Any]:
            ids, mask = tokenize(tokenizer, [q for _, q, _, _ in batch], max_tokens)
            out: dict[str, Any] = {
                "image": torch.stack([im for im, *_ in batch]),
                "question_ids": ids,
                "question_mask": mask,
                "question_id": [qid for *_, qid in batch],
                "answers": [a for _, _, a, _ in batch],
                "question": [q for _, q, _, _ in batch],
            }
            if train:
                texts, weights, counts = [], [], []
                for _, _, answers, _ in batch:
                    w = _weights(answers, how)
                    texts += list(w)
                    weights += list(w.values())
                    counts.append(len(w))
                a_ids, a_mask = tokenize(tokenizer, texts, max_answer)
                out.update(
                    answer_ids=a_ids,
                    answer_mask=a_mask,
                    answer_weights=torch.tensor(weights),
                    answers_per_question=torch.tensor(counts),
                )
            return out

        return TaskData(VQASet(items, reader, need_answers=train), collate)

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, "VQA train", True, tokenizer)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        task_data = self._data(data, data.eval[split], f"VQA {split}", False, tokenizer)
        path = Path(data.expand(self.options["answer_list"]))
        if not path.is_file():
            raise FileNotFoundError(f"VQA answer list {str(path)!r} does not exist")
        answers = json.loads(path.read_text())
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) for a in answers)
        ):
            raise ValueError(f"the VQA answer list {str(path)!r} must be a JSON list of strings")
        ids, mask = tokenize(tokenizer, list(answers), self.options["max_answer_tokens"])
        task_data.answer_list = list(answers)  # type: ignore[attr-defined]
        task_data.answer_tokens = (ids, mask)  # type: ignore[attr-defined]
        return task_data

    # ------------------------------------------------------------------ train/eval
    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        net = unwrap(model)
        loss = net.loss(
            batch["image"],
            batch["question_ids"],
            batch["question_mask"],
            batch["answer_ids"],
            batch["answer_mask"],
            batch["answers_per_question"],
            batch["answer_weights"],
        )
        return {"loss": loss, "answer_nll": loss}

    def predict(
        self,
        model: VQAModel,
        data: TaskData,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> list[tuple[Any, str, str, list[str]]]:
        """``[(question_id, question, predicted answer, human answers)]`` for ``data``, through
        the task evaluation loop (:func:`~xfm.tasks.base.collect_outputs`)."""
        device = device or next(model.parameters()).device
        a_ids, a_mask = (t.to(device) for t in data.answer_tokens)  # type: ignore[attr-defined]
        answer_list: list[str] = data.answer_list  # type: ignore[attr-defined]

        def step(batch: dict[str, Any]) -> dict[str, Any]:
            states = model.question_states(
                batch["image"], batch["question_ids"], batch["question_mask"]
            )
            rank = model.rank_answers(states.float(), a_ids, a_mask, self.options["k_test"])
            return {
                "question_id": batch["question_id"],
                "question": batch["question"],
                "answer": [answer_list[i] for i in rank.answer_index.tolist()],
                "answers": batch["answers"],
            }

        out = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device,
            autocast=autocast,
            progress=progress,
            desc="VQA eval",
        )
        return list(zip(out["question_id"], out["question"], out["answer"], out["answers"]))

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
        rows = self.predict(model, data, batch_size, device, autocast, progress)
        if self.options["result_file"]:
            write_results([(q, a) for q, _, a, _ in rows], self.options["result_file"])
        scored = {q: gts for q, _, _, gts in rows if gts}
        if not scored:
            return {"questions": float(len(rows))}
        result = vqa_accuracy({q: a for q, _, a, _ in rows}, scored)
        # question-prior baseline: the most frequent answer of each question type (first
        # three words) on this very split, i.e. the best any image-blind answerer can do
        by_type: dict[str, Counter] = {}
        for _, q, _, gts in rows:
            if gts:
                by_type.setdefault(question_type(q), Counter()).update(
                    normalize_answer(a) for a in gts
                )
        prior = {
            q: by_type[question_type(text)].most_common(1)[0][0] for q, text, _, gts in rows if gts
        }
        baseline = vqa_accuracy(prior, scored)["accuracy"]
        return {
            "accuracy": result["accuracy"],
            "question_prior": baseline,
            "questions": result["n"],
        }
