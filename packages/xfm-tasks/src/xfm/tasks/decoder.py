"""Transformer answer / caption decoder: causal self-attention + cross-attention, then an LM head.

The decoder of the X-FM VQA model (official ``text_decoder``, a ``RobertaForCausalLM`` with
cross-attention in every layer) built from the xfm-core blocks: RoBERTa embeddings
(:class:`xfm.text.embeddings.TextEmbeddings`), :class:`xfm.core.layers.PostLNLayer` with
cross-attention run with ``causal=True``, and an :class:`xfm.core.layers.MLMHead` tied to the word
embeddings. It cross-attends to states of width ``context_width`` (the fusion-encoder output for
VQA and captioning).

Also here: the per-sequence NLL used by VQA training/ranking and captioning, and greedy / beam
search generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.layers import MLMHead, PostLNLayer
from xfm.text.config import TextEncoderConfig
from xfm.text.embeddings import TextEmbeddings
from xfm.text.encoder import init_bert_weights

__all__ = [
    "AnswerDecoder",
    "ContextKV",
    "DecoderConfig",
    "beam_search",
    "decoder_state_from_pretrained",
    "greedy_decode",
    "sequence_nll",
]

ContextKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecoderConfig:
    """Dimensions of :class:`AnswerDecoder` (defaults: the X-FM base decoder, RoBERTa vocabulary).

    ``context_width`` is the width of the states cross-attended to (``None``: ``width``).
    """

    vocab_size: int = 50265
    width: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    max_positions: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    layer_norm_eps: float = 1e-5
    context_width: int | None = None
    dropout: float = 0.1
    attn_dropout: float = 0.1
    act: str = "gelu"
    backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "layers", "heads", "ffn_dim", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive int; got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"DecoderConfig: width {self.width} not divisible by {self.heads}")

    def text_config(self) -> TextEncoderConfig:
        """The RoBERTa-style embedding configuration of the decoder."""
        return TextEncoderConfig(
            vocab_size=self.vocab_size,
            width=self.width,
            layers=self.layers,
            heads=self.heads,
            ffn_dim=self.ffn_dim,
            max_positions=self.max_positions,
            type_vocab_size=self.type_vocab_size,
            pad_token_id=self.pad_token_id,
            layer_norm_eps=self.layer_norm_eps,
            dropout=self.dropout,
            attn_dropout=self.attn_dropout,
            act=self.act,
            position_style="roberta",
        )


class AnswerDecoder(nn.Module):
    """Causal post-LN transformer with cross-attention in every layer and a tied LM head.

    Submodules: ``embeddings`` (:class:`TextEmbeddings`, ``embeddings.word`` tied to
    ``lm_head.decoder``), ``layers`` (:class:`PostLNLayer` with cross-attention), ``lm_head``.
    """

    def __init__(self, config: DecoderConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or DecoderConfig(), **overrides)
        self.config = config
        self.width = config.width
        self.context_width = config.context_width or config.width
        self.embeddings = TextEmbeddings(config.text_config())
        self.layers = nn.ModuleList(
            PostLNLayer(
                config.width,
                config.heads,
                config.ffn_dim,
                cross_attention=True,
                cross_dim=self.context_width,
                eps=config.layer_norm_eps,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                act=config.act,
                backend=config.backend,  # type: ignore[arg-type]
            )
            for _ in range(config.layers)
        )
        self.lm_head = MLMHead(
            config.width,
            config.vocab_size,
            eps=config.layer_norm_eps,
            act=config.act,
            tied_weight=self.embeddings.word.weight,
        )
        init_bert_weights(self)

    def context_kv(self, context: torch.Tensor) -> ContextKV:
        """Per-layer cross-attention keys/values ``[B, H, Tc, Dh]`` of ``context`` ``[B, Tc, Dc]``.

        Compute once and expand (``expand_kv``) to reuse one question's states for many answers.
        """
        return [layer.cross_attn.project_kv(context) for layer in self.layers]

    @staticmethod
    def expand_kv(kv: ContextKV, repeats: int | torch.Tensor) -> ContextKV:
        """Repeat every row of ``kv`` ``repeats`` times (``repeat_interleave`` along batch)."""
        return [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in kv]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_kv: ContextKV | None = None,
    ) -> torch.Tensor:
        """Last-layer states ``[B, T, D]`` (see :meth:`forward`)."""
        if context is None and context_kv is None:
            raise ValueError("the decoder cross-attends: pass context [B, Tc, Dc] or context_kv")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.context_width):
            raise ValueError(
                f"decoder context must be [B, Tc, {self.context_width}]; got {tuple(context.shape)}"
            )
        x = self.embeddings(input_ids)
        key_mask = None if attention_mask is None else attention_mask.bool()
        ctx_mask = None if context_mask is None else context_mask.bool()
        for i, layer in enumerate(self.layers):
            kv = None if context_kv is None else context_kv[i]
            x = layer(
                x,
                key_mask=key_mask,
                context=None if kv is not None else context,
                context_mask=ctx_mask,
                causal=True,
                context_kv=kv,
            )
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_kv: ContextKV | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: ``[B, T]`` token ids (``<s> tokens </s> <pad>...``).
            attention_mask: ``[B, T]`` 1 = real token (combined with the causal mask).
            context: ``[B, Tc, Dc]`` states to cross-attend to.
            context_mask: ``[B, Tc]`` 1 = attend (``None``: all).
            context_kv: precomputed :meth:`context_kv` (instead of ``context``).

        Returns:
            ``[B, T, V]`` logits; position ``t`` predicts token ``t+1``.
        """
        h = self.hidden_states(input_ids, attention_mask, context, context_mask, context_kv)
        return self.lm_head(h)


def sequence_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, pad_token_id: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-sequence NLL ``[B]``: CE of ``logits[:, :-1]`` against ``input_ids[:, 1:]``, summed.

    Padding targets are ignored (the official ``labels = ids.masked_fill(pad, -100)``). The
    first body token and ``</s>`` are included. ``logits`` ``[B, T, V]``, ``input_ids`` ``[B, T]``.
    """
    targets = input_ids[:, 1:].masked_fill(input_ids[:, 1:] == pad_token_id, -100)
    shifted = logits[:, :-1]
    loss = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return loss.view(targets.shape).sum(1)


def _start(batch: int, bos: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch, 1), bos, dtype=torch.long, device=device)


@torch.no_grad()
def greedy_decode(
    decoder: AnswerDecoder,
    context: torch.Tensor,
    context_mask: torch.Tensor | None = None,
    max_length: int = 20,
) -> torch.Tensor:
    """Greedy generation ``[B, <= max_length]`` (``<s>`` first; finished rows padded).

    ``context`` ``[B, Tc, Dc]``. Generation of a row stops at ``</s>``.
    """
    cfg = decoder.config
    kv = decoder.context_kv(context)
    b = context.shape[0]
    ids = _start(b, cfg.bos_token_id, context.device)
    done = torch.zeros(b, dtype=torch.bool, device=context.device)
    for _ in range(max_length - 1):
        mask = ids.ne(cfg.pad_token_id)
        logits = decoder(ids, mask, context_mask=context_mask, context_kv=kv)[:, -1]
        logits[:, cfg.pad_token_id] = float("-inf")
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt.eq(cfg.eos_token_id)
        if bool(done.all()):
            break
    return ids


@torch.no_grad()
def beam_search(
    decoder: AnswerDecoder,
    context: torch.Tensor,
    context_mask: torch.Tensor | None = None,
    num_beams: int = 3,
    max_length: int = 20,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Beam search; returns the best sequence per row ``[B, <= max_length]`` (pad-filled).

    Finished hypotheses are scored ``sum log p / length ** length_penalty``.
    """
    cfg = decoder.config
    b, n = context.shape[0], num_beams
    kv = decoder.expand_kv(decoder.context_kv(context), n)
    cmask = None if context_mask is None else context_mask.repeat_interleave(n, 0)
    ids = _start(b * n, cfg.bos_token_id, context.device)
    scores = torch.zeros(b, n, device=context.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    for _ in range(max_length - 1):
        mask = ids.ne(cfg.pad_token_id)
        logits = decoder(ids, mask, context_mask=cmask, context_kv=kv)[:, -1].float()
        logp = logits.log_softmax(-1)
        logp[:, cfg.pad_token_id] = float("-inf")
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, n * vocab)
        top, idx = cand.topk(2 * n, dim=1)
        beam, tok = idx // vocab, idx % vocab
        new_ids, new_scores = [], []
        for i in range(b):
            rows, vals = [], []
            for s, bm, t in zip(top[i].tolist(), beam[i].tolist(), tok[i].tolist()):
                if s == float("-inf"):
                    continue
                seq = torch.cat([ids[i * n + bm], ids.new_tensor([t])])
                if t == cfg.eos_token_id:
                    finished[i].append((s / (seq.numel() - 1) ** length_penalty, seq))
                else:
                    rows.append(seq)
                    vals.append(s)
                if len(rows) == n:
                    break
            while len(rows) < n:  # every continuation ended: keep a dead beam
                rows.append(torch.cat([ids[i * n], ids.new_tensor([cfg.pad_token_id])]))
                vals.append(float("-inf"))
            new_ids.extend(rows)
            new_scores.append(vals)
        ids = torch.stack(new_ids)
        scores = torch.tensor(new_scores, device=context.device)
        if all(len(f) >= n for f in finished):  # n hypotheses ended in every row
            break
    out = []
    for i in range(b):
        if not finished[i]:
            j = int(scores[i].argmax())
            finished[i].append((0.0, ids[i * n + j]))
        out.append(max(finished[i], key=lambda f: f[0])[1])
    width = max(s.numel() for s in out)
    result = torch.full((b, width), cfg.pad_token_id, dtype=torch.long, device=context.device)
    for i, s in enumerate(out):
        result[i, : s.numel()] = s
    return result


def decoder_state_from_pretrained(
    state: Mapping[str, torch.Tensor], prefix: str = "text_decoder."
) -> dict[str, torch.Tensor]:
    """Decoder weights (``prefix`` + :class:`AnswerDecoder` names) from an xfm pretraining state.

    The official recipe starts the answer / caption decoder from the pretrained fusion encoder:
    ``fusion_encoder.layers.i.*`` -> ``layers.i.*`` (self-attention, cross-attention, FFN),
    the embeddings from the language encoder's (the fusion encoder reads the language states,
    it has no embeddings of its own in xfm) and the LM head's dense / layer norm / bias from the
    fusion MLM head; the head's decoder weight stays tied to the word embeddings. Decoder layers
    beyond the fusion depth are not in the result (they stay freshly initialised).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fusion_encoder.layers."):
            out[prefix + key[len("fusion_encoder.") :]] = value
        elif key.startswith("text_encoder.embeddings."):
            out[prefix + key[len("text_encoder.") :]] = value
        elif key.startswith("fusion_mlm_head.") and not key.endswith("decoder.weight"):
            out[prefix + "lm_head." + key[len("fusion_mlm_head.") :]] = value
    return out
