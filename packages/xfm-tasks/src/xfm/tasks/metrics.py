"""Evaluation metrics of the downstream tasks (all percentages).

* retrieval: :func:`retrieval_recall` ranks the rows of the two score matrices of the official
  evaluation (``score_i2t`` ``[I, T]`` and ``score_t2i`` ``[T, I]``, filled independently) and
  reports TR@K (an image counts at the best rank over all its texts), IR@K and their means.
  **Ties** are broken by index (a stable descending sort: among equal scores the lower column
  comes first), which is what the official ``np.argsort(...)[::-1]`` does for the -100 filler
  of long rows only by accident; here it is defined.
* NLVR2 / classification: :func:`accuracy`.
* boxes: :func:`box_iou` / :func:`generalized_box_iou` (continuous ``xyxy``, element-wise) and
  :func:`official_iou_xywh` (the pixel-inclusive IoU of the RefCOCO evaluation: a box
  ``[x, y, w, h]`` covers pixels ``x .. x+w-1``), :func:`grounding_accuracy` (IoU >= 0.5 after
  the official conversion of the normalised ``(cx, cy, w, h)`` prediction to pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "accuracy",
    "best_rank",
    "box_iou",
    "cxcywh_to_xyxy",
    "generalized_box_iou",
    "grounding_accuracy",
    "official_iou_xywh",
    "pred_to_pixels",
    "retrieval_recall",
    "xywh_to_xyxy",
]


def best_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best-ranked positive column of each row.

    Args:
        scores: ``[R, C]``.
        positive: ``[R, C]`` bool, at least one True per row.

    Returns:
        ``[R]`` int64: position of the first positive in the stable descending order of the row.
    """
    if scores.shape != positive.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and positive must be [R, C] of one shape; got {tuple(scores.shape)} and "
            f"{tuple(positive.shape)}"
        )
    if not bool(positive.any(1).all()):
        raise ValueError("every row needs at least one positive column")
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    hits = torch.gather(positive, 1, order)
    return hits.float().argmax(dim=1)


def retrieval_recall(
    score_i2t: torch.Tensor,
    score_t2i: torch.Tensor,
    txt2img: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """TR@K / IR@K (percent) of the official retrieval evaluation.

    Args:
        score_i2t: ``[I, T]`` scores of every text for each image.
        score_t2i: ``[T, I]`` scores of every image for each text.
        txt2img: ``[T]`` image index of each text (an image may have any number of texts).
        ks: the cut-offs.

    Returns:
        ``txt_r{K}``, ``img_r{K}``, ``txt_r_mean``, ``img_r_mean``, ``r_mean`` (official names).
    """
    num_i, num_t = score_i2t.shape
    if score_t2i.shape != (num_t, num_i) or txt2img.shape != (num_t,):
        raise ValueError(
            f"expected score_i2t [I, T], score_t2i [T, I], txt2img [T]; got "
            f"{tuple(score_i2t.shape)}, {tuple(score_t2i.shape)}, {tuple(txt2img.shape)}"
        )
    txt2img = txt2img.long().to(score_i2t.device)
    images = torch.arange(num_i, device=score_i2t.device)
    pos_i2t = txt2img[None, :] == images[:, None]
    tr = best_rank(score_i2t, pos_i2t)
    ir = best_rank(score_t2i, pos_i2t.t().contiguous())
    out: dict[str, float] = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * float((tr < k).float().mean())
    for k in ks:
        out[f"img_r{k}"] = 100.0 * float((ir < k).float().mean())
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Percentage of ``pred == target`` (``[N]`` each; 0 for N = 0 is an error)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.numel() == 0:
        raise ValueError("accuracy of zero samples is undefined")
    return 100.0 * float((pred.long() == target.long()).float().mean())


def xywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` top-left ``(x, y, w, h)`` -> corners ``(x1, y1, x2, y2)``."""
    x, y, w, h = box.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def cxcywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` centre ``(cx, cy, w, h)`` -> corners."""
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _areas(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union of element-wise ``xyxy`` boxes (negative sizes count as 0)."""
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = wh_a.prod(-1) + wh_b.prod(-1) - inter
    return inter, union


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of ``xyxy`` boxes ``[..., 4]``; 0 where the union is empty."""
    inter, union = _areas(a.double(), b.double())
    iou = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))
    return iou.to(a.dtype if a.is_floating_point() else torch.float32)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU ``IoU - (C - U) / C`` (``C``: smallest enclosing box); equals the IoU
    where the enclosing box is empty (both boxes degenerate to one point / line)."""
    a64, b64 = a.double(), b.double()
    inter, union = _areas(a64, b64)
    iou = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))
    lt = torch.minimum(a64[..., :2], b64[..., :2])
    rb = torch.maximum(a64[..., 2:], b64[..., 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    giou = torch.where(hull > 0, iou - (hull - union) / hull.clamp(min=1e-300), iou)
    return giou.to(a.dtype if a.is_floating_point() else torch.float32)


def official_iou_xywh(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU of the RefCOCO evaluation for ``[..., 4]`` pixel boxes ``(x, y, w, h)``.

    Pixel-inclusive: the intersection spans ``max(x) .. min(x + w - 1)`` and counts only when
    both spans are positive (``x1 < x2``), plus one pixel; the union is ``w1 h1 + w2 h2 - I``.
    """
    g, p = gt.double(), pred.double()
    x1 = torch.maximum(g[..., 0], p[..., 0])
    y1 = torch.maximum(g[..., 1], p[..., 1])
    x2 = torch.minimum(g[..., 0] + g[..., 2] - 1, p[..., 0] + p[..., 2] - 1)
    y2 = torch.minimum(g[..., 1] + g[..., 3] - 1, p[..., 1] + p[..., 3] - 1)
    overlap = (x1 < x2) & (y1 < y2)
    inter = torch.where(overlap, (x2 - x1 + 1) * (y2 - y1 + 1), torch.zeros_like(x1))
    union = g[..., 2] * g[..., 3] + p[..., 2] * p[..., 3] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def pred_to_pixels(pred: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Normalised ``(cx, cy, w, h)`` ``[N, 4]`` -> pixel ``(x, y, w, h)`` for image
    ``sizes`` ``[N, 2]`` = ``(width, height)`` (official: scale, then move to the top-left)."""
    p = pred.double().clone()
    s = sizes.double()
    p[:, 0::2] *= s[:, :1]
    p[:, 1::2] *= s[:, 1:]
    p[:, 0] -= p[:, 2] / 2
    p[:, 1] -= p[:, 3] / 2
    return p


def grounding_accuracy(pred: torch.Tensor, gt_xywh: torch.Tensor, sizes: torch.Tensor) -> float:
    """Percentage of predictions with official IoU >= 0.5 (see :func:`official_iou_xywh`)."""
    if pred.shape != gt_xywh.shape or pred.shape[0] != sizes.shape[0]:
        raise ValueError(
            f"pred [N,4], gt [N,4], sizes [N,2] expected; got {tuple(pred.shape)}, "
            f"{tuple(gt_xywh.shape)}, {tuple(sizes.shape)}"
        )
    iou = official_iou_xywh(gt_xywh, pred_to_pixels(pred, sizes))
    return 100.0 * float((iou >= 0.5).double().mean())
