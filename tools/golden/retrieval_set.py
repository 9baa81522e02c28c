"""Retrieval golden set: official ``XFMForRetrieval`` (outputs of ``../shared/golden_tasks/retrieval``).

``Retrieval.py: evaluation`` is not in the official copy used here, so its outputs
(``score_matrix_i2t`` / ``score_matrix_t2i``) are computed from the official MODEL's methods with
the documented semantics (``../shared/golden_tasks/README.md``): texts and images encoded in the
config's test batches, ``sims = image_feat @ text_feat.T`` (no temperature), for each image the
``k_test`` most similar texts re-scored by ``itm_head(get_cross_embeds(...))[:, 1]`` (raw logit),
every other entry ``-100.0``; the same, independently, for each text over the images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from golden_set import GoldenSet, Tensors
from official_harness import build_official, fix_hard_negatives, require_topk_margin, token_batch
from other_dims import DIMS as D
from other_dims import TASK_SEED
from task_descriptions import describe_task, official_config, text_json
from torch import nn

SEED = TASK_SEED + 10
TXT2IMG = [0, 0, 1, 1, 1, 2, 2, 3, 3]  # 4 images, 9 texts
TRAIN_IMAGE_IDX = [1, 1, 3, 0]
TRAIN_TEXT_IDX = [2, 4, 7, 1]
CONFIG = official_config(
    D.text_layers, 2, embed_dim=D.embed_dim, temp=0.07, k_test=3, max_tokens=14,
    batch_size_test=3, batch_size_test_text=4,
)  # fmt: skip


def build() -> nn.Module:
    """Official ``XFMForRetrieval(config)``."""
    from models.model_retrieval import XFMForRetrieval

    return build_official(XFMForRetrieval, CONFIG, text_json(), SEED)


def describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="retrieval", official_class="models.model_retrieval.XFMForRetrieval",
        official_yaml="configs/xfm-ft/Retrieval_coco.yaml", seed=SEED, config=CONFIG,
        extra={"embed_dim": D.embed_dim, "temp_value_in_checkpoint": 0.05},
    )  # fmt: skip


def _negative(g: torch.Generator, ids: list[int], b: int) -> int:
    """A random batch position whose image id differs from row ``b``'s (official same-id mask)."""
    allowed = [j for j, v in enumerate(ids) if v != ids[b]]
    return allowed[int(torch.randint(0, len(allowed), (1,), generator=g))]


def make_inputs(g: torch.Generator) -> Tensors:
    """Gallery (images, texts padded to ``max_tokens``), ``k_test`` and a training batch."""
    image = torch.randn(len(set(TXT2IMG)), 3, D.image_res, D.image_res, generator=g)
    lengths = [
        int(n) for n in torch.randint(4, CONFIG["max_tokens"] + 1, (len(TXT2IMG),), generator=g)
    ]
    ids, atts = token_batch(g, lengths, D.vocab, CONFIG["max_tokens"])
    ti = TRAIN_IMAGE_IDX
    return {
        "image": image,
        "text_ids": ids,
        "text_atts": atts,
        "k_test": torch.tensor(CONFIG["k_test"]),
        "txt2img": torch.tensor(TXT2IMG),
        "train_image_idx": torch.tensor(ti),
        "train_text_idx": torch.tensor(TRAIN_TEXT_IDX),
        "train_neg_image_idx": torch.tensor([_negative(g, ti, b) for b in range(len(ti))]),
        "train_neg_text_idx": torch.tensor([_negative(g, ti, b) for b in range(len(ti))]),
    }


def _encode_gallery(
    model: nn.Module, image: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor
) -> tuple:
    """Test-batch encoding as in the evaluation loop: (image_embeds, image_feat, text_embeds, text_feat)."""
    text_embeds, text_feat, image_embeds, image_feat = [], [], [], []
    step = CONFIG["batch_size_test_text"]
    for s in range(0, ids.shape[0], step):
        te = model.get_text_embeds(ids[s : s + step], atts[s : s + step])
        text_embeds.append(te)
        text_feat.append(model.get_features(text_embeds=te))
    step = CONFIG["batch_size_test"]
    for s in range(0, image.shape[0], step):
        ie = model.get_vision_embeds(image[s : s + step])[0]
        image_embeds.append(ie)
        image_feat.append(model.get_features(image_embeds=ie))
    return (
        torch.cat(image_embeds),
        torch.cat(image_feat),
        torch.cat(text_embeds),
        torch.cat(text_feat),
    )


def evaluation(
    model: nn.Module, image: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor, k: int
) -> tuple:
    """``(sims_i2t, score_matrix_i2t, score_matrix_t2i)`` with the official evaluation semantics."""
    image_embeds, image_feat, text_embeds, text_feat = _encode_gallery(model, image, ids, atts)
    sims = image_feat @ text_feat.t()
    n_i, n_t = sims.shape
    score_i2t = torch.full((n_i, n_t), -100.0)
    for i in range(n_i):
        _, top = sims[i].topk(k)
        enc = image_embeds[i].repeat(k, 1, 1)
        enc_atts = torch.ones(enc.shape[:-1], dtype=torch.long)
        cls = model.get_cross_embeds(
            enc, enc_atts, text_embeds=text_embeds[top], text_atts=atts[top]
        )[:, 0]
        score_i2t[i, top] = model.itm_head(cls)[:, 1]
    score_t2i = torch.full((n_t, n_i), -100.0)
    for t in range(n_t):
        _, top = sims.t()[t].topk(k)
        enc = image_embeds[top]
        enc_atts = torch.ones(enc.shape[:-1], dtype=torch.long)
        cls = model.get_cross_embeds(
            enc,
            enc_atts,
            text_embeds=text_embeds[t].repeat(k, 1, 1),
            text_atts=atts[t].repeat(k, 1),
        )[:, 0]
        score_t2i[t, top] = model.itm_head(cls)[:, 1]
    return sims, score_i2t, score_t2i


def _weights(sim: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``get_hard_negatives`` weights: softmax(sim)+1e-5, entries of the same image id set to 0."""
    w = F.softmax(sim, dim=1) + 1e-5
    return w.masked_fill_(torch.eq(idx.view(-1, 1), idx.view(1, -1)), 0)


@torch.no_grad()
def compute(model: nn.Module, x: Tensors) -> Tensors:
    """Every output of ``../shared/golden_tasks/retrieval/outputs.safetensors``."""
    image, ids, atts, k = x["image"], x["text_ids"], x["text_atts"], int(x["k_test"])
    out: Tensors = {}
    vision = model.get_vision_embeds(image)[0]
    text = model.get_text_embeds(ids, atts)
    out["vision_embeds"], out["text_embeds"] = vision, text
    out["image_feat"], out["text_feat"] = model.get_features(vision, text)
    cls = []
    for i in range(vision.shape[0]):
        enc = vision[i].repeat(text.shape[0], 1, 1)
        enc_atts = torch.ones(enc.shape[:-1], dtype=torch.long)
        cls.append(
            model.get_cross_embeds(
                enc, enc_atts, text_embeds=text, text_atts=atts, is_pretrain=False
            )[:, 0]
        )
    out["fusion_cls_all_pairs"] = torch.stack(cls)
    out["itm_logits_all_pairs"] = model.itm_head(out["fusion_cls_all_pairs"])

    sims, score_i2t, score_t2i = evaluation(model, image, ids, atts, k)
    require_topk_margin(sims, k, "retrieval sims_i2t")
    require_topk_margin(sims.t(), k, "retrieval sims_t2i")
    out["sims_i2t"], out["sims_t2i"] = sims, sims.t()
    out["score_matrix_i2t"], out["score_matrix_t2i"] = score_i2t, score_t2i
    for name, s, matrix in (("i2t", sims, score_i2t), ("t2i", sims.t(), score_t2i)):
        top_sim, top_idx = s.topk(k, dim=1)
        out[f"{name}_topk_idx"], out[f"{name}_topk_sim"] = top_idx, top_sim
        out[f"{name}_topk_itm_score"] = matrix.gather(1, top_idx)

    ti, tt = x["train_image_idx"], x["train_text_idx"]
    t_img, t_ids, t_atts = image[ti], ids[tt], atts[tt]
    fix_hard_negatives(model, x["train_neg_image_idx"], x["train_neg_text_idx"])
    captured: list[torch.Tensor] = []
    hook = model.itm_head.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        loss_itc, loss_itm = model(t_img, t_ids, t_atts, idx=ti)
    finally:
        hook.remove()
        del model.get_hard_negatives
    out["train_loss_itc"], out["train_loss_itm"] = loss_itc, loss_itm
    out["train_itm_logits"] = captured[0]
    image_feat, text_feat = model.get_features(
        model.get_vision_embeds(t_img)[0], model.get_text_embeds(t_ids, t_atts)
    )
    out["train_sim_i2t"] = image_feat @ text_feat.t() / model.temp
    out["train_itm_neg_weights_i2t"] = _weights(image_feat @ text_feat.t() / model.temp, ti)
    out["train_itm_neg_weights_t2i"] = _weights(text_feat @ image_feat.t() / model.temp, ti)
    return {k: v.detach().contiguous() for k, v in out.items()}


SET = GoldenSet("retrieval", SEED, build, describe, make_inputs, compute)
