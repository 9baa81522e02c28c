"""VQA v2 accuracy, answer normalisation and the official result / submission JSON.

Accuracy of a predicted answer against the 10 human answers of a question, as the official VQA
evaluation computes it: for each of the 10 subsets of 9 annotators (leave one out),
``min(#annotators in the subset who gave the answer / 3, 1)``, averaged over the 10 subsets.
Answers are normalised first (lower case, punctuation, number words to digits, articles,
contractions) like the official evaluation script.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "normalize_answer",
    "soft_targets",
    "vqa_accuracy",
    "vqa_score",
    "write_results",
]

_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "lets": "let's",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "shant": "shan't",
    "shed": "she'd",
    "shes": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "thered": "there'd",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "wed": "we'd",
    "weve": "we've",
    "werent": "weren't",
    "whats": "what's",
    "whens": "when's",
    "wheres": "where's",
    "whos": "who's",
    "whove": "who've",
    "whyre": "why're",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUM = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_NUM, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The official answer processing (whitespace, punctuation, digits, articles, contractions)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (usually 10).

    Mean over the leave-one-annotator-out subsets of ``min(#matches in the subset / 3, 1)``.
    """
    if not human_answers:
        raise ValueError("vqa_score needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in human_answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


def vqa_accuracy(
    predictions: Mapping[Any, str], answers: Mapping[Any, Sequence[str]]
) -> dict[str, float]:
    """``{"accuracy": percent, "n": count}`` over the questions of ``answers``.

    Raises:
        KeyError: a question of ``answers`` has no prediction.
    """
    missing = [q for q in answers if q not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} question(s) without a prediction, e.g. {missing[:3]}")
    scores = [vqa_score(predictions[q], a) for q, a in answers.items()]
    return {"accuracy": 100.0 * sum(scores) / max(1, len(scores)), "n": float(len(scores))}


def soft_targets(human_answers: Sequence[str]) -> dict[str, float]:
    """Training targets of one question: answer -> VQA score of that answer (weights)."""
    return {a: vqa_score(a, human_answers) for a in dict.fromkeys(human_answers)}


def write_results(predictions: Iterable[tuple[Any, str]], path: str | os.PathLike[str]) -> Path:
    """Write the official result / submission JSON ``[{"question_id": int, "answer": str}]``."""
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in predictions]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, out)
    return out
