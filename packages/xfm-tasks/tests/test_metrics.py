"""Task metrics on hand-built cases whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from xfm.tasks.metrics import (
    accuracy,
    best_rank,
    box_iou,
    cxcywh_to_xyxy,
    generalized_box_iou,
    grounding_accuracy,
    official_iou_xywh,
    pred_to_pixels,
    retrieval_recall,
    xywh_to_xyxy,
)

# --------------------------------------------------------------------------- retrieval


def test_recall_several_captions_per_image_and_ties() -> None:
    # 3 images; texts 0,1 -> image 0, texts 2,3,4 -> image 1, text 5 -> image 2.
    txt2img = torch.tensor([0, 0, 1, 1, 1, 2])
    score_i2t = torch.tensor(
        [
            # image 0: its texts 0, 1 score 0.1 and 0.5; text 3 scores 0.9 (rank 0),
            # text 1 is at rank 1 -> best rank 1 (TR@1 miss, TR@5 hit).
            [0.1, 0.5, 0.2, 0.9, 0.0, 0.0],
            # image 1: all six tie at 0.3: the stable order is 0,1,2,... -> its first own
            # text (2) is at rank 2 (TR@1 miss, TR@5 hit).
            [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
            # image 2: its text 5 has the top score -> rank 0.
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    score_t2i = torch.tensor(
        [
            [2.0, 1.0, 0.0],  # text 0 -> image 0 at rank 0
            [1.0, 2.0, 0.0],  # text 1 -> image 0 at rank 1
            [-100.0, -100.0, -100.0],  # text 2 -> ties: image 1 at rank 1 (after image 0)
            [0.0, 1.0, 0.0],  # text 3 -> image 1 at rank 0
            [5.0, 4.0, 3.0],  # text 4 -> image 1 at rank 1
            [1.0, 1.0, 1.0],  # text 5 -> ties: image 2 at rank 2
        ]
    )
    got = retrieval_recall(score_i2t, score_t2i, txt2img, ks=(1, 2, 5))
    # TR ranks: [1, 2, 0] -> @1 1/3, @2 2/3, @5 3/3
    assert got["txt_r1"] == pytest.approx(100 / 3)
    assert got["txt_r2"] == pytest.approx(200 / 3)
    assert got["txt_r5"] == pytest.approx(100.0)
    # IR ranks: [0, 1, 1, 0, 1, 2] -> @1 2/6, @2 5/6, @5 6/6
    assert got["img_r1"] == pytest.approx(100 * 2 / 6)
    assert got["img_r2"] == pytest.approx(100 * 5 / 6)
    assert got["img_r5"] == pytest.approx(100.0)
    assert got["txt_r_mean"] == pytest.approx((100 / 3 + 200 / 3 + 100) / 3)
    assert got["img_r_mean"] == pytest.approx((100 * 2 / 6 + 100 * 5 / 6 + 100) / 3)
    assert got["r_mean"] == pytest.approx((got["txt_r_mean"] + got["img_r_mean"]) / 2)


def test_recall_uses_both_matrices_independently() -> None:
    # score_t2i is NOT the transpose: the i2t matrix says every image ranks its text first,
    # the t2i matrix says every text ranks the wrong image first.
    txt2img = torch.tensor([0, 1])
    score_i2t = torch.eye(2)
    score_t2i = 1 - torch.eye(2)
    got = retrieval_recall(score_i2t, score_t2i, txt2img, ks=(1,))
    assert got["txt_r1"] == 100.0
    assert got["img_r1"] == 0.0


def test_best_rank_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 9), generator=gen).float()  # many ties
    positive = torch.rand(50, 9, generator=gen) < 0.3
    positive[:, 0] |= ~positive.any(1)
    got = best_rank(scores, positive)
    for r in range(50):
        ranks = []
        for c in range(9):
            if positive[r, c]:
                s = scores[r, c]
                # stable descending position: strictly greater, plus equal with a lower index
                ranks.append(int((scores[r] > s).sum()) + int((scores[r, :c] == s).sum()))
        assert int(got[r]) == min(ranks)


def test_recall_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"score_t2i \[T, I\]"):
        retrieval_recall(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="at least one positive"):
        best_rank(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------ NLVR


def test_nlvr_accuracy() -> None:
    assert accuracy(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 1, 0])) == 50.0
    assert accuracy(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0])) == 100.0
    assert accuracy(torch.tensor([1]), torch.tensor([0])) == 0.0
    with pytest.raises(ValueError, match="differ"):
        accuracy(torch.tensor([1, 0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="zero samples"):
        accuracy(torch.tensor([]), torch.tensor([]))


# ----------------------------------------------------------------------------- boxes


def _b(*v: float) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.float64)


def test_iou_and_giou_hand_cases() -> None:
    # identical boxes
    assert float(box_iou(_b(0, 0, 2, 2), _b(0, 0, 2, 2))) == 1.0
    assert float(generalized_box_iou(_b(0, 0, 2, 2), _b(0, 0, 2, 2))) == 1.0
    # half overlap: [0,2]x[0,2] and [1,3]x[0,2]: I = 2, U = 6, hull = 3x2 = 6
    assert float(box_iou(_b(0, 0, 2, 2), _b(1, 0, 3, 2))) == pytest.approx(2 / 6)
    assert float(generalized_box_iou(_b(0, 0, 2, 2), _b(1, 0, 3, 2))) == pytest.approx(2 / 6)
    # no overlap: [0,1]^2 and [2,3]x[0,1]: I = 0, U = 2, hull = 3 -> GIoU = 0 - 1/3
    assert float(box_iou(_b(0, 0, 1, 1), _b(2, 0, 3, 1))) == 0.0
    assert float(generalized_box_iou(_b(0, 0, 1, 1), _b(2, 0, 3, 1))) == pytest.approx(-1 / 3)
    # far apart diagonally: [0,1]^2 and [3,4]^2: U = 2, hull = 16 -> GIoU = -14/16
    assert float(generalized_box_iou(_b(0, 0, 1, 1), _b(3, 3, 4, 4))) == pytest.approx(-14 / 16)
    # containment: [0,4]^2 contains [1,3]^2: I = 4, U = 16, hull = box -> GIoU = IoU
    assert float(box_iou(_b(0, 0, 4, 4), _b(1, 1, 3, 3))) == pytest.approx(0.25)
    assert float(generalized_box_iou(_b(1, 1, 3, 3), _b(0, 0, 4, 4))) == pytest.approx(0.25)
    # touching edges: [0,1]^2 and [1,2]x[0,1]: I = 0, U = 2, hull = 2 -> GIoU = 0
    assert float(box_iou(_b(0, 0, 1, 1), _b(1, 0, 2, 1))) == 0.0
    assert float(generalized_box_iou(_b(0, 0, 1, 1), _b(1, 0, 2, 1))) == 0.0


def test_iou_degenerate_boxes() -> None:
    # zero-width box inside a box: I = 0, U = 4 -> IoU 0, hull = 4 -> GIoU 0
    assert float(box_iou(_b(1, 0, 1, 2), _b(0, 0, 2, 2))) == 0.0
    assert float(generalized_box_iou(_b(1, 0, 1, 2), _b(0, 0, 2, 2))) == 0.0
    # two identical points: empty union and hull -> defined as 0 (never NaN)
    assert float(box_iou(_b(1, 1, 1, 1), _b(1, 1, 1, 1))) == 0.0
    assert float(generalized_box_iou(_b(1, 1, 1, 1), _b(1, 1, 1, 1))) == 0.0
    # inverted box (x2 < x1) has no area: IoU 0 against anything
    assert float(box_iou(_b(2, 2, 0, 0), _b(0, 0, 2, 2))) == 0.0
    # a point outside a box: U = 1, hull [0,3]x[0,3] = 9 -> GIoU = -8/9
    got = float(generalized_box_iou(_b(3, 3, 3, 3), _b(0, 0, 1, 1)))
    assert got == pytest.approx(-8 / 9)
    assert not math.isnan(got)


def test_iou_is_elementwise_and_symmetric() -> None:
    gen = torch.Generator().manual_seed(1)
    a = xywh_to_xyxy(torch.rand(64, 4, generator=gen, dtype=torch.float64))
    b = xywh_to_xyxy(torch.rand(64, 4, generator=gen, dtype=torch.float64))
    assert torch.equal(box_iou(a, b), box_iou(b, a))
    assert torch.allclose(generalized_box_iou(a, b), generalized_box_iou(b, a))
    g = generalized_box_iou(a, b)
    assert bool((g <= box_iou(a, b) + 1e-12).all()) and bool((g >= -1).all())


def test_box_conversions() -> None:
    assert xywh_to_xyxy(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert cxcywh_to_xyxy(torch.tensor([2.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 1.0, 3.0, 5.0]


def test_official_pixel_iou() -> None:
    # pixel-inclusive: [0,0,10,10] covers pixels 0..9. Against [5,0,10,10]: x 5..9 (5 px),
    # y 0..9 (10 px) -> I = 50, U = 100 + 100 - 50 = 150
    got = official_iou_xywh(torch.tensor([0.0, 0, 10, 10]), torch.tensor([5.0, 0, 10, 10]))
    assert float(got) == pytest.approx(50 / 150)
    # identical
    assert (
        float(official_iou_xywh(torch.tensor([3.0, 4, 5, 6]), torch.tensor([3.0, 4, 5, 6]))) == 1.0
    )
    # spans that meet in one pixel column (x1 == x2) count as no overlap in the official code
    got = official_iou_xywh(torch.tensor([0.0, 0, 10, 10]), torch.tensor([9.0, 0, 10, 10]))
    assert float(got) == 0.0
    # disjoint
    assert (
        float(official_iou_xywh(torch.tensor([0.0, 0, 2, 2]), torch.tensor([5.0, 5, 2, 2]))) == 0.0
    )


def test_grounding_accuracy_converts_predictions_to_pixels() -> None:
    # image 200 x 100; gt box [50, 25, 100, 50] = centre (100, 50), size 100 x 50
    sizes = torch.tensor([[200, 100], [200, 100]])
    gt = torch.tensor([[50.0, 25, 100, 50], [50.0, 25, 100, 50]])
    exact = torch.tensor([0.5, 0.5, 0.5, 0.5])  # -> x = 100 - 50 = 50, y = 50 - 25 = 25
    assert pred_to_pixels(exact[None], sizes[:1]).tolist() == [[50.0, 25.0, 100.0, 50.0]]
    # shifted right by 60 px: x 110..209 vs 50..149 -> 40 px x 50 px = 2000 of 5000+5000-2000
    shifted = torch.tensor([0.8, 0.5, 0.5, 0.5])
    iou = official_iou_xywh(gt[:1], pred_to_pixels(shifted[None], sizes[:1]))
    assert float(iou) == pytest.approx(2000 / 8000)
    assert grounding_accuracy(torch.stack([exact, shifted]), gt, sizes) == 50.0
