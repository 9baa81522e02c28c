"""VQA accuracy against independently computed answers (annotator subsets by brute force)."""

from __future__ import annotations

import itertools
import json

import pytest

from xfm.tasks.vqa_metrics import (
    normalize_answer,
    soft_targets,
    vqa_accuracy,
    vqa_score,
    write_results,
)


def _brute_force(pred: str, answers: list[str]) -> float:
    """Mean over all 9-annotator subsets of min(#matches / 3, 1) (answers already normal)."""
    subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
    return sum(min(1.0, sum(answers[i] == pred for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize("matches", range(11))
def test_score_equals_the_subset_average(matches: int) -> None:
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_score("red", answers) == pytest.approx(_brute_force("red", answers), abs=1e-12)


def test_hand_computed_cases() -> None:
    # 3 of 10 said it: 3 subsets drop a matching annotator (2/3), 7 keep all three (1)
    assert vqa_score("2", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    # 1 of 10: 9 subsets with one match (1/3), one subset with none
    assert vqa_score("2", ["2"] + ["3"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_score("cat", ["dog"] * 10) == 0.0
    assert vqa_score("yes", ["yes"] * 10) == 1.0


def test_normalisation_like_the_official_evaluation() -> None:
    assert normalize_answer("Two") == "2"
    assert normalize_answer("the dog.") == "dog"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("  A Red Ball! ") == "red ball"
    assert vqa_score("Two", ["2"] * 10) == 1.0


def test_dataset_accuracy_result_json_and_soft_targets(tmp_path) -> None:
    answers = {1: ["yes"] * 10, 2: ["2"] * 2 + ["3"] * 8}
    got = vqa_accuracy({1: "yes", 2: "2"}, answers)
    assert got["accuracy"] == pytest.approx(100 * (1 + _brute_force("2", answers[2])) / 2)
    with pytest.raises(KeyError, match="without a prediction"):
        vqa_accuracy({1: "yes"}, answers)
    path = write_results([(1, "yes"), (2, "2")], tmp_path / "r.json")
    assert json.loads(path.read_text()) == [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 2, "answer": "2"},
    ]
    weights = soft_targets(answers[2])
    assert weights == {"2": pytest.approx(_brute_force("2", answers[2])), "3": 1.0}
