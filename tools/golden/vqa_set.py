"""VQA golden set: official ``XFMForVQA`` (outputs of ``../shared/golden_tasks/vqa``).

``VQA.py: evaluation`` is not in the official copy used here; its result (``answer_index`` =
``topk_ids[b, argmax topk_probs[b]]`` of ``model(image, question, answer_list, train=False,
k=k_test)``) is computed from the official model's output. The intermediate ranking tensors
(start pass, candidate pass) are the official ``text_decoder`` called exactly as
``rank_answer`` calls it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from golden_set import GoldenSet, Tensors
from official_harness import build_official, require_topk_margin, token_batch
from other_dims import DIMS as D
from other_dims import TASK_SEED
from task_descriptions import describe_task, official_config, text_json
from torch import nn

SEED = TASK_SEED + 20
DECODER_LAYERS = 1
CONFIG = official_config(
    D.text_layers, 1, num_dec_layers=DECODER_LAYERS, decoder_fusion_start_at=0, k_test=5,
    pad_token_id=1, max_tokens=40,
)  # fmt: skip
ANSWER_LENGTHS = [3, 4, 5, 3, 4, 5, 3, 4, 3, 5]  # with <s> and </s>
SHARED_FIRST = [(0, 1), (4, 5), (4, 7)]  # answers sharing their first body token
QUESTION_LENGTHS = [9, 5, 12]
TRAIN_N = [2, 1, 3]
TRAIN_ANSWER_IDX = [0, 3, 5, 1, 7, 2]
TRAIN_WEIGHTS = [0.6, 0.4, 1.0, 0.5, 0.25, 0.25]


def build() -> nn.Module:
    """Official ``XFMForVQA(config)`` (a stub ``dataset`` module satisfies its import)."""
    from models.model_generation import XFMForVQA

    return build_official(XFMForVQA, CONFIG, text_json(), SEED)


def describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="vqa", official_class="models.model_generation.XFMForVQA",
        official_yaml="configs/xfm-ft/VQA.yaml", seed=SEED, config=CONFIG,
        decoder_layers=DECODER_LAYERS,
    )  # fmt: skip


def _repad(ids: torch.Tensor, atts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(atts.sum(1).max())
    return ids[:, :n].clone(), atts[:, :n].clone()


def make_inputs(g: torch.Generator) -> Tensors:
    """Images, questions (padding="longest"), the answer list, ``k_test``, a training batch."""
    image = torch.randn(len(QUESTION_LENGTHS), 3, D.image_res, D.image_res, generator=g)
    q_ids, q_atts = token_batch(g, QUESTION_LENGTHS, D.vocab)
    a_ids, a_atts = token_batch(g, ANSWER_LENGTHS, D.vocab)
    for src, dst in SHARED_FIRST:
        a_ids[dst, 1] = a_ids[src, 1]
    idx = torch.tensor(TRAIN_ANSWER_IDX)
    t_ids, t_atts = _repad(a_ids[idx], a_atts[idx])
    return {
        "image": image,
        "question_ids": q_ids,
        "question_atts": q_atts,
        "answer_ids": a_ids,
        "answer_atts": a_atts,
        "k_test": torch.tensor(CONFIG["k_test"]),
        "train_answer_idx": idx,
        "train_answer_ids": t_ids,
        "train_answer_atts": t_atts,
        "train_n": torch.tensor(TRAIN_N),
        "train_weights": torch.tensor(TRAIN_WEIGHTS),
    }


@torch.no_grad()
def compute(model: nn.Module, x: Tensors) -> Tensors:
    """Every output of ``../shared/golden_tasks/vqa/outputs.safetensors``."""
    from models.model_generation import tile

    image, k = x["image"], int(x["k_test"])
    q_ids, q_atts, a_ids, a_atts = (
        x["question_ids"],
        x["question_atts"],
        x["answer_ids"],
        x["answer_atts"],
    )
    out: Tensors = {}
    vision, vision_atts = model.get_vision_embeds(image)
    text = model.text_encoder(q_ids, attention_mask=q_atts, return_dict=True).last_hidden_state
    states = model.get_cross_embeds(
        vision, vision_atts, text_embeds=text, text_atts=q_atts, is_pretrain=False
    )
    out["vision_embeds"], out["text_embeds"], out["question_states"] = vision, text, states

    # rank_answer, step by step (evaluation: the question mask is all ones)
    n_q = states.shape[0]
    ones = torch.ones(states.shape[:-1], dtype=torch.long)
    start = model.text_decoder(
        a_ids[0, 0].repeat(n_q, 1), encoder_hidden_states=states, encoder_attention_mask=ones,
        return_dict=True, reduction="none",
    )  # fmt: skip
    logits = start.logits[:, 0, :]
    out["first_token_logits"] = logits
    prob = F.softmax(logits, dim=1).index_select(dim=1, index=a_ids[:, 1])
    out["first_token_prob_answers"] = prob
    require_topk_margin(prob, k, "vqa first-token probabilities")
    top_probs, top_ids = prob.topk(k, dim=1)
    out["first_token_topk_probs"], out["first_token_topk_ids"] = top_probs, top_ids
    cand_ids = torch.cat([a_ids.index_select(0, t) for t in top_ids])
    cand_atts = torch.cat([a_atts.index_select(0, t) for t in top_ids])
    cand = model.text_decoder(
        cand_ids, attention_mask=cand_atts, encoder_hidden_states=tile(states, 0, k),
        encoder_attention_mask=tile(ones, 0, k), labels=cand_ids.masked_fill(cand_ids == 1, -100),
        return_dict=True, reduction="none",
    )  # fmt: skip
    out["candidate_logits_full"] = cand.logits.view(n_q, k, cand_ids.shape[1], -1)
    nll = cand.loss.view(n_q, k)
    out["candidate_answer_nll"] = nll
    out["candidate_log_prob_sum"] = (
        torch.cat([top_probs.reshape(-1, 1).log(), -nll.reshape(-1, 1)], 1).sum(1).view(n_q, k)
    )

    question = SimpleNamespace(input_ids=q_ids, attention_mask=q_atts)
    answers = SimpleNamespace(input_ids=a_ids, attention_mask=a_atts)
    topk_ids, topk_probs = model(image, question, answers, train=False, k=k)
    out["topk_ids"], out["topk_probs"] = topk_ids, topk_probs
    out["answer_index"] = topk_ids.gather(1, topk_probs.argmax(1, keepdim=True)).squeeze(1)

    n = x["train_n"].tolist()
    t_ids, t_atts = x["train_answer_ids"], x["train_answer_atts"]
    rep = torch.cat([torch.full((c,), b) for b, c in enumerate(n)])
    train = model.text_decoder(
        t_ids, attention_mask=t_atts, encoder_hidden_states=states[rep], encoder_attention_mask=q_atts[rep],
        labels=t_ids.masked_fill(t_ids == 1, -100), return_dict=True, reduction="none",
    )  # fmt: skip
    out["train_answer_nll"] = train.loss
    out["train_loss"] = model(
        image, question, SimpleNamespace(input_ids=t_ids, attention_mask=t_atts), k=n,
        weights=x["train_weights"], train=True,
    )  # fmt: skip
    return {k_: v.detach().contiguous() for k_, v in out.items()}


SET = GoldenSet("vqa", SEED, build, describe, make_inputs, compute)
