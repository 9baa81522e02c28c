"""The official retrieval layout (``models.model_retrieval.XFMForRetrieval``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xfm.tasks.official.xfm_layout import XFMTaskLayout
from xfm.tasks.retrieval import RetrievalModel, retrieval_scores
from xfm.train.objectives import hard_negative_weights

__all__ = ["RetrievalLayout", "retrieval_outputs"]


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(max(1, size)))


@torch.no_grad()
def retrieval_outputs(
    model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Outputs of a golden ``retrieval`` directory: encoders, every pair's fusion ``[CLS]``
    ``[I, T, D]`` and ITM logits, the official two-stage evaluation (our fast implementation,
    batches as the official config's) and the training forward with fixed hard negatives."""
    out: dict[str, torch.Tensor] = {}
    image, ids, atts = inputs["image"], inputs["text_ids"], inputs["text_atts"]
    k = int(inputs["k_test"])
    used = golden.get("official_config_used", {})
    vision = model.encode_image(image)
    text = model.encode_text(ids, atts)
    image_feat, text_feat = model.itc_features(vision, text)
    out.update(vision_embeds=vision, text_embeds=text, image_feat=image_feat, text_feat=text_feat)

    kv = model.fusion_image_kv(vision)  # each image's K/V computed once
    n_t = text.shape[0]
    cls = []
    for i in range(vision.shape[0]):
        kv_i = [
            (kk[i : i + 1].expand(n_t, -1, -1, -1), vv[i : i + 1].expand(n_t, -1, -1, -1))
            for kk, vv in kv
        ]
        cls.append(model.fuse(text, atts, image_kv=kv_i)[:, 0])
    fusion_cls = torch.stack(cls)
    out["fusion_cls_all_pairs"] = fusion_cls
    out["itm_logits_all_pairs"] = model.itm_head(fusion_cls)

    text_batch = int(used.get("batch_size_test_text", 8))
    scores = retrieval_scores(
        model,
        _batches(image, int(used.get("batch_size_test", 8))),
        list(zip(_batches(ids, text_batch), _batches(atts, text_batch))),
        k,
        itm_batch_size=max(2, k + 1),
    )
    out["sims_i2t"], out["sims_t2i"] = scores.sims_i2t, scores.sims_i2t.t()
    out["score_matrix_i2t"], out["score_matrix_t2i"] = scores.score_i2t, scores.score_t2i
    for name, sims, matrix in (
        ("i2t", scores.sims_i2t, scores.score_i2t),
        ("t2i", scores.sims_i2t.t(), scores.score_t2i),
    ):
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        out[f"{name}_topk_idx"] = top.indices
        out[f"{name}_topk_sim"] = top.values
        out[f"{name}_topk_itm_score"] = matrix.gather(1, top.indices)

    ti, tt = inputs["train_image_idx"].long(), inputs["train_text_idx"].long()
    neg_img, neg_txt = inputs["train_neg_image_idx"].long(), inputs["train_neg_text_idx"].long()
    t_img, t_ids, t_atts = image[ti], ids[tt], atts[tt]
    with torch.enable_grad():
        losses = model(t_img, t_ids, t_atts, ti, negatives=(neg_img, neg_txt))
    out["train_loss_itc"], out["train_loss_itm"] = losses["itc"].detach(), losses["itm"].detach()
    v_tr, t_tr = model.encode_image(t_img), model.encode_text(t_ids, t_atts)
    f_i, f_t = model.itc_features(v_tr, t_tr)
    sim = f_i @ f_t.t() / model.temp
    out["train_sim_i2t"] = sim
    out["train_itm_neg_weights_i2t"] = hard_negative_weights(sim, ti)
    out["train_itm_neg_weights_t2i"] = hard_negative_weights(sim.t(), ti)
    kv_tr = model.fusion_image_kv(v_tr)
    rows = torch.arange(len(ti))
    rows_img = torch.cat([rows, neg_img, rows])
    rows_txt = torch.cat([rows, rows, neg_txt])
    fused = model.fuse(
        t_tr[rows_txt],
        t_atts[rows_txt],
        image_kv=[(kk[rows_img], vv[rows_img]) for kk, vv in kv_tr],
    )
    out["train_itm_logits"] = model.itm_logits(fused)
    return out


class RetrievalLayout(XFMTaskLayout):
    """``XFMForRetrieval`` <-> :class:`~xfm.tasks.retrieval.RetrievalModel`."""

    name = "retrieval"
    task = "retrieval"
    golden_names = ("retrieval",)
    official_class = "models.model_retrieval.XFMForRetrieval"
    marker_keys = (r"^text_encoder\.embeddings\.", r"^itm_head\.", r"^vision_proj\.")
    absent_keys = (r"^text_encoder\.roberta\.",)
    model_class = RetrievalModel

    def golden_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], golden: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return retrieval_outputs(model, inputs, golden), {}
