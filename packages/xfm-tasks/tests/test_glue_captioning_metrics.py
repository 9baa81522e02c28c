"""GLUE and captioning metrics against independently computed values."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from xfm.tasks.glue_metrics import glue_metrics

pytest.importorskip("sklearn")


def test_matthews_f1_accuracy_by_hand() -> None:
    gold = [1, 1, 1, 0, 0, 0, 0, 1]
    pred = [1, 0, 1, 0, 1, 0, 0, 1]
    tp, tn, fp, fn = 3, 3, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics("cola", pred, gold)["matthews"] == pytest.approx(100 * mcc)
    f1 = 2 * tp / (2 * tp + fp + fn)
    got = glue_metrics("mrpc", pred, gold)
    assert got["f1"] == pytest.approx(100 * f1)
    assert got["accuracy"] == pytest.approx(100 * 6 / 8)
    assert list(glue_metrics("qqp", pred, gold)) == ["accuracy", "f1"]


def test_pearson_spearman_by_hand() -> None:
    x = np.array([0.5, 1.0, 2.5, 3.0, 4.5])
    y = np.array([1.0, 0.0, 3.0, 5.0, 4.0])
    xc, yc = x - x.mean(), y - y.mean()
    r = (xc * yc).sum() / math.sqrt((xc**2).sum() * (yc**2).sum())
    rx, ry = np.array([1, 2, 3, 4, 5.0]), np.array([2, 1, 3, 5, 4.0])  # ranks (no ties)
    rho = 1 - 6 * ((rx - ry) ** 2).sum() / (5 * (25 - 1))
    got = glue_metrics("stsb", x, y)
    assert got["pearson"] == pytest.approx(100 * r)
    assert got["spearman"] == pytest.approx(100 * rho)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad", [1], [1])
    with pytest.raises(ValueError, match="must be equal"):
        glue_metrics("sst2", [1, 0], [1])


# ------------------------------------------------------------------------------ captioning
def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _bleu4(cands: list[str], refs: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions, closest reference length."""
    match, total = [0] * 4, [0] * 4
    c_len = r_len = 0
    for cand, rs in zip(cands, refs):
        cw = cand.split()
        c_len += len(cw)
        r_len += min((abs(len(r.split()) - len(cw)), len(r.split())) for r in rs)[1]
        for n in range(1, 5):
            cnt = _ngrams(cw, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r.split(), n)
            match[n - 1] += sum(min(c, best[g]) for g, c in cnt.items())
            total[n - 1] += max(0, len(cw) - n + 1)
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def _cider_d(cands: dict, refs: dict) -> float:
    """CIDEr-D (Vedantam et al.): tf-idf n-gram vectors, clipped cosine, x10, mean over n
    (test cases have equal candidate and reference lengths, so the length penalty is 1)."""
    n_img = len(refs)
    df: Counter = Counter()
    for rs in refs.values():
        for n in range(1, 5):
            df.update({g for r in rs for g in _ngrams(r.split(), n)})

    def vec(text: str, n: int) -> dict:
        return {
            g: c * (math.log(n_img) - math.log(max(1.0, df[g])))
            for g, c in _ngrams(text.split(), n).items()
        }

    total = 0.0
    for k, rs in refs.items():
        per_n = []
        for n in range(1, 5):
            h = vec(cands[k], n)
            s = 0.0
            for r in rs:
                v = vec(r, n)
                nh = math.sqrt(sum(x * x for x in h.values()))
                nr = math.sqrt(sum(x * x for x in v.values()))
                dot = sum(min(h[g], v.get(g, 0.0)) * v.get(g, 0.0) for g in h)
                s += dot / (nh * nr) if nh and nr else 0.0
            per_n.append(s / len(rs))
        total += 10.0 * sum(per_n) / 4
    return total / n_img


CANDS = {1: "a red circle left of a blue square", 2: "two green triangles on the grass"}
REFS = {
    1: ["a red circle next to a blue square", "the red circle is left of the square"],
    2: ["two green triangles on some grass", "green shapes on the lawn today"],
}


def test_bleu_and_cider_match_independent_computation() -> None:
    pytest.importorskip("pycocoevalcap")
    from xfm.tasks.captioning_metrics import caption_scores

    got = caption_scores(CANDS, REFS)
    want_bleu = _bleu4([CANDS[1], CANDS[2]], [REFS[1], REFS[2]])
    assert got["bleu4"] == pytest.approx(100 * want_bleu, rel=1e-6)
    assert got["cider"] == pytest.approx(100 * _cider_d(CANDS, REFS), rel=1e-6)
    perfect = caption_scores({1: REFS[1][0], 2: REFS[2][0]}, {1: REFS[1][:1], 2: REFS[2][:1]})
    assert perfect["bleu4"] == pytest.approx(100.0)


def test_caption_tokenisation_and_missing() -> None:
    pytest.importorskip("pycocoevalcap")
    from xfm.tasks.captioning_metrics import caption_scores, tokenize_caption

    assert tokenize_caption("A Red, circle.") == "a red circle"
    with pytest.raises(KeyError, match="without a caption"):
        caption_scores({}, REFS)
