"""VQA model: X-FM encoders + an answer decoder over the fusion question states.

Official semantics (``XFMForVQA``, ``../shared/golden_tasks/README.md``): question -> language
encoder -> fusion encoder with the image = ``question_states`` ``[B, Tq, Dt]`` (all positions);
the decoder (:class:`~xfm.tasks.decoder.AnswerDecoder`) cross-attends to them.

* Training: question states repeated ``n_b`` times per question, loss =
  ``sum(weight * answer NLL) / number of questions``.
* Ranking (:meth:`VQAModel.rank_answers`): a start pass on ``[<s>]`` gives the first-token
  probabilities of every answer; the ``k`` best answers are scored with teacher forcing,
  ``score = log p(first token) - NLL(answer)`` (the first token counts twice, as official), then
  a softmax over the ``k`` scores, re-sorted. Cross-attention in evaluation attends to every
  question position (official), in training only to real ones.

The official checkpoint (``XFMForVQA``) is read and written by :mod:`xfm.tasks.official.vqa`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import LoadReport, load_into
from xfm.fusion.model import XFMConfig, create_encoders
from xfm.tasks.decoder import (
    AnswerDecoder,
    DecoderConfig,
    decoder_state_from_pretrained,
    sequence_nll,
)

__all__ = ["RankResult", "VQAConfig", "VQAModel"]


@dataclass
class VQAConfig:
    """Encoder specs (``{"name": registry name, **options}``) and decoder fields."""

    text: dict[str, Any] = field(default_factory=lambda: {"name": "roberta"})
    vision: dict[str, Any] = field(default_factory=lambda: {"name": "beit_v2"})
    fusion: dict[str, Any] = field(default_factory=lambda: {"name": "cross_attention"})
    decoder: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankResult:
    """Output of :meth:`VQAModel.rank_answers` (``QB`` questions, ``A`` answers, ``k``)."""

    first_token_logits: torch.Tensor  # [QB, V]
    first_token_prob_answers: torch.Tensor  # [QB, A]
    first_token_topk_probs: torch.Tensor  # [QB, k]
    first_token_topk_ids: torch.Tensor  # [QB, k]
    candidate_answer_nll: torch.Tensor  # [QB, k] (first-token top-k order)
    candidate_log_prob_sum: torch.Tensor  # [QB, k]
    topk_ids: torch.Tensor  # [QB, k] answer-list indices, best first
    topk_probs: torch.Tensor  # [QB, k]
    candidate_logits: torch.Tensor | None = None  # [QB, k, La, V] when asked for

    @property
    def answer_index(self) -> torch.Tensor:
        """``[QB]`` chosen answer (the official ``topk_ids[b, argmax topk_probs[b]]``)."""
        best = self.topk_probs.argmax(1, keepdim=True)
        return self.topk_ids.gather(1, best).squeeze(1)


class VQAModel(nn.Module):
    """Vision, language and fusion encoders (built as the X-FM ones:
    :func:`~xfm.fusion.model.create_encoders`) plus :class:`AnswerDecoder` ``text_decoder``.

    Shapes: images ``[B, 3, H, W]``; questions ``[B, Tq]``; answers ``[N, La]``
    (``<s> tokens </s> <pad>..``); question states ``[B, Tq, Dt]``.
    """

    def __init__(self, config: VQAConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or VQAConfig(), **overrides)
        self.config = config
        encoders = XFMConfig(text=config.text, vision=config.vision, fusion=config.fusion)
        self.vision_encoder, self.text_encoder, self.fusion_encoder = create_encoders(encoders)
        dt = self.text_encoder.width
        tcfg = self.text_encoder.config
        dec = {
            "vocab_size": tcfg.vocab_size,
            "width": dt,
            "heads": tcfg.heads,
            "ffn_dim": tcfg.ffn_dim,
            "max_positions": tcfg.max_positions,
            "pad_token_id": tcfg.pad_token_id,
            "layer_norm_eps": tcfg.layer_norm_eps,
            "context_width": dt,
            **config.decoder,
        }
        self.text_decoder = AnswerDecoder(DecoderConfig(**dec))
        self.pad_token_id = self.text_decoder.config.pad_token_id

    # ----------------------------------------------------------------- encoder
    def question_states(
        self, image: torch.Tensor, question_ids: torch.Tensor, question_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, 3, H, W]``, ``[B, Tq]`` x2 -> fusion states ``[B, Tq, Dt]`` (decoder memory)."""
        vision = self.vision_encoder(image)
        text = self.text_encoder(question_ids, attention_mask=question_mask)
        return self.fusion_encoder(text, question_mask, vision)

    # ---------------------------------------------------------------- training
    def answer_nll(
        self,
        question_states: torch.Tensor,
        question_mask: torch.Tensor | None,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        repeats: torch.Tensor | int = 1,
    ) -> torch.Tensor:
        """NLL ``[N]`` of each answer given its question (question ``b`` repeated ``repeats[b]``)."""
        states = question_states.repeat_interleave(repeats, 0)
        qmask = None if question_mask is None else question_mask.repeat_interleave(repeats, 0)
        if states.shape[0] != answer_ids.shape[0]:
            raise ValueError(
                f"{answer_ids.shape[0]} answers but the repeats give {states.shape[0]} questions"
            )
        logits = self.text_decoder(answer_ids, answer_mask, states, qmask)
        return sequence_nll(logits, answer_ids, self.pad_token_id)

    def loss(
        self,
        image: torch.Tensor,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        answers_per_question: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """Soft-target VQA loss: ``sum(weights * answer NLL) / B`` (official ``train=True``)."""
        states = self.question_states(image, question_ids, question_mask)
        nll = self.answer_nll(states, question_mask, answer_ids, answer_mask, answers_per_question)
        return (weights.to(nll.dtype) * nll).sum() / image.shape[0]

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def rank_answers(
        self,
        question_states: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        k: int,
        question_mask: torch.Tensor | None = None,
        return_logits: bool = False,
        chunk: int = 4096,
    ) -> RankResult:
        """Rank the answer list ``[A, La]`` for every question (official ``rank_answer``).

        ``question_mask=None`` attends to every question position (the official evaluation).
        ``chunk`` bounds the number of candidate sequences decoded at once.
        """
        dec = self.text_decoder
        qb, na = question_states.shape[0], answer_ids.shape[0]
        k = min(int(k), na)
        kv = dec.context_kv(question_states)
        start = answer_ids[:1, :1].expand(qb, 1)
        first_logits = dec(start, None, context_mask=question_mask, context_kv=kv)[:, 0]
        probs = first_logits.float().softmax(-1).index_select(1, answer_ids[:, 1])
        topk_probs, topk_ids = probs.topk(k, dim=1)
        cand_ids = answer_ids[topk_ids.reshape(-1)]
        cand_mask = answer_mask[topk_ids.reshape(-1)]
        nll, logits = [], []
        per = max(1, chunk // k)
        for s in range(0, qb, per):
            e = min(qb, s + per)
            ckv = dec.expand_kv([(a[s:e], b[s:e]) for a, b in kv], k)
            cmask = None if question_mask is None else question_mask[s:e].repeat_interleave(k, 0)
            rows = slice(s * k, e * k)
            if return_logits:
                out = dec(cand_ids[rows], cand_mask[rows], context_mask=cmask, context_kv=ckv)
                nll.append(sequence_nll(out, cand_ids[rows], self.pad_token_id))
                logits.append(out)
            else:
                nll.append(
                    self._candidate_nll(
                        cand_ids[rows], cand_mask[rows], cmask, ckv, topk_probs[s:e].reshape(-1)
                    )
                )
        cand_nll = torch.cat(nll).view(qb, k)
        log_sum = topk_probs.log() - cand_nll
        rerank_probs, order = log_sum.softmax(1).topk(k, dim=1)
        return RankResult(
            first_token_logits=first_logits,
            first_token_prob_answers=probs,
            first_token_topk_probs=topk_probs,
            first_token_topk_ids=topk_ids,
            candidate_answer_nll=cand_nll,
            candidate_log_prob_sum=log_sum,
            topk_ids=topk_ids.gather(1, order),
            topk_probs=rerank_probs,
            candidate_logits=(
                torch.cat(logits).view(qb, k, *logits[0].shape[1:]) if return_logits else None
            ),
        )

    def _candidate_nll(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        context_mask: torch.Tensor | None,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]],
        first_prob: torch.Tensor,
    ) -> torch.Tensor:
        """NLL ``[n]`` of candidate answers ``[n, La]``, the fast way (same value as
        :func:`sequence_nll` of the full logits).

        Position 0 sees only ``<s>`` (causal), so its prediction is the start pass:
        ``-log first_prob``. The LM head (the ``V``-wide projection, the bulk of the cost) runs
        only at the positions whose target is a real token.
        """
        dec = self.text_decoder
        hidden = dec.hidden_states(ids, mask, context_mask=context_mask, context_kv=context_kv)
        targets = ids[:, 2:]
        real = targets.ne(self.pad_token_id)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(targets)[real]
        token_nll = torch.nn.functional.cross_entropy(
            dec.lm_head(hidden[:, 1:-1][real]).float(), targets[real], reduction="none"
        )
        rest = torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, token_nll)
        return rest - first_prob.float().log()

    # --------------------------------------------------------------- from xfm
    def init_from_pretrained(self, state: Mapping[str, torch.Tensor]) -> LoadReport:
        """Initialise from an xfm :class:`~xfm.fusion.model.XFM` state dict (pretraining).

        Encoders are copied by name; the decoder starts from the pretrained fusion encoder
        (:func:`~xfm.tasks.decoder.decoder_state_from_pretrained`), as the official recipe
        initialises ``text_decoder.*`` from ``fusion_encoder.*``.
        """
        mapped = {
            k: v
            for k, v in state.items()
            if k.split(".")[0] in ("vision_encoder", "text_encoder", "fusion_encoder")
        }
        mapped.update(decoder_state_from_pretrained(state))
        return load_into(self, mapped, strict=False, source="xfm pretraining state")
