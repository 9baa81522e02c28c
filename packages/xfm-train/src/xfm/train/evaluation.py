"""Zero-shot image-text retrieval (ITC similarities) on a held-out image-text split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xfm.train.distributed import all_gather_no_grad

__all__ = ["RetrievalEvaluator", "retrieval_metrics"]


def retrieval_metrics(
    sim_i2t: torch.Tensor, text_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K in both directions.

    Args:
        sim_i2t: ``[I, T]`` similarity of every image to every text.
        text_image: ``[T]`` index (row of ``sim_i2t``) of each text's image.

    Returns:
        ``tr@K`` (image -> text: an image counts when any of its texts is in the top K),
        ``ir@K`` (text -> image), their mean ``r_mean``, and ``chance@1`` (= 1 / I).
    """
    num_images, num_texts = sim_i2t.shape
    positive = text_image[None, :] == torch.arange(num_images, device=sim_i2t.device)[:, None]
    out: dict[str, float] = {}
    # image -> text: rank of the best-ranked positive text
    order = sim_i2t.argsort(dim=1, descending=True)
    hits = torch.gather(positive, 1, order)
    first = torch.where(
        hits.any(1),
        hits.float().argmax(1),
        torch.full_like(hits[:, 0], num_texts, dtype=torch.long),
    )
    # text -> image: rank of its image
    scores = sim_i2t.t()
    own = scores.gather(1, text_image.view(-1, 1))
    rank_t = (scores > own).sum(1)
    for k in ks:
        out[f"tr@{k}"] = float((first < k).float().mean()) * 100
        out[f"ir@{k}"] = float((rank_t < k).float().mean()) * 100
    out["r_mean"] = sum(out[f"{d}@{k}"] for d in ("tr", "ir") for k in ks) / (2 * len(ks))
    out["chance@1"] = 100.0 / num_images
    out["images"] = float(num_images)
    out["texts"] = float(num_texts)
    return out


class RetrievalEvaluator:
    """Encode every pair of a held-out split once per call and score retrieval.

    Args:
        loader: a :class:`~xfm.train.data.SourceLoader` of the ``image_text`` split (no
            shuffling); each rank encodes its part, features are all-gathered.
        max_pairs: stop after this many pairs per rank (0: all).
    """

    def __init__(self, loader: Any, max_pairs: int = 0) -> None:
        self.loader = loader
        self.max_pairs = max_pairs

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device, autocast: Any) -> dict[str, float]:
        """``{tr@1, tr@5, tr@10, ir@1, ..., r_mean, chance@1}`` (percent)."""
        was_training = model.training
        model.eval()
        ld = self.loader
        ld.close()
        ld.epoch, ld.sample_in_epoch = 0, 0
        ld._start_epoch()
        img_feats, txt_feats, img_ids, seen = [], [], [], 0
        try:
            for batch in ld._iter:
                if len(batch) == 0:
                    continue
                batch = batch.to(device)
                with autocast():
                    vision = model.encode_image(batch.image)
                    text = model.encode_text(batch.text_ids, batch.text_mask)
                    fi, ft = model.itc_features(vision, text)
                img_feats.append(fi.float())
                txt_feats.append(ft.float())
                img_ids.append(batch.image_index)
                seen += len(batch)
                if self.max_pairs and seen >= self.max_pairs:
                    break
        finally:
            ld.close()
            model.train(was_training)
        fi = torch.cat(all_gather_no_grad(torch.cat(img_feats)))
        ft = torch.cat(all_gather_no_grad(torch.cat(txt_feats)))
        ids = torch.cat(all_gather_no_grad(torch.cat(img_ids)))
        unique, text_image = torch.unique(ids, return_inverse=True)
        first = torch.full((len(unique),), len(ids), dtype=torch.long, device=ids.device)
        first.scatter_reduce_(0, text_image, torch.arange(len(ids), device=ids.device), "amin")
        return retrieval_metrics(fi[first] @ ft.t(), text_image)
