"""Throughput of VQA answer-list ranking (``VQAModel.rank_answers``): questions per second.

The official evaluation ranks a fixed list of 3,128 answers per question: a start pass of the
decoder on ``<s>`` keeps the ``k`` answers (k=128) with the highest first-token probability,
then the decoder scores those ``k`` answers with teacher forcing (cross-attending to the
question states). This times that ranking from the fusion question states (the encoders are
excluded: their cost does not depend on k) for several ``k``, at a "small" configuration by
default (width 256, 4 heads, FFN 1024, 2 decoder layers, RoBERTa vocabulary of 50,265 tokens,
questions of 16 tokens, answers of 1-4 body tokens). Each setting is timed ``--reps`` times
after ``--warmup`` runs; the median is reported.

Usage::

    python tools/bench/vqa_eval.py                       # k = 16 32 64 128 256, CPU
    python tools/bench/vqa_eval.py --ks 128 --batch 32 --device cuda --reps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xfm.core.attention import use_backend
from xfm.tasks.decoder import AnswerDecoder, DecoderConfig
from xfm.tasks.vqa_model import VQAModel


class _RankOnly(torch.nn.Module):
    """Just the decoder, with :meth:`VQAModel.rank_answers` bound to it."""

    rank_answers = VQAModel.rank_answers
    _candidate_nll = VQAModel._candidate_nll

    def __init__(self, decoder: AnswerDecoder) -> None:
        super().__init__()
        self.text_decoder = decoder
        self.pad_token_id = decoder.config.pad_token_id


def _answers(n: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(1, 5, (n,), generator=gen)
    ids = torch.full((n, 6), 1, dtype=torch.long)
    for i, m in enumerate(lengths.tolist()):
        ids[i, 0] = 0
        ids[i, 1 : 1 + m] = torch.randint(3, vocab, (m,), generator=gen)
        ids[i, 1 + m] = 2
    return ids, ids.ne(1).long()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--answers", type=int, default=3128)
    p.add_argument("--batch", type=int, default=16, help="questions per ranking call")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--layers", type=int, default=6, help="decoder layers")
    p.add_argument("--vocab", type=int, default=50265)
    p.add_argument("--question-len", type=int, default=16)
    p.add_argument("--backend", default="sdpa", choices=["eager", "sdpa", "auto", "xformers"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    decoder = AnswerDecoder(
        DecoderConfig(
            vocab_size=args.vocab,
            width=args.width,
            heads=args.heads,
            ffn_dim=args.ffn,
            layers=args.layers,
            dropout=0.0,
            attn_dropout=0.0,
        )
    )
    model = _RankOnly(decoder).to(device).eval()
    ids, mask = (t.to(device) for t in _answers(args.answers, args.vocab, gen))
    states = torch.randn(args.batch, args.question_len, args.width, generator=gen).to(device)
    print(
        f"VQA answer ranking: {args.answers} answers, {args.batch} questions/call, width "
        f"{args.width}, {args.layers} decoder layers, vocab {args.vocab}, {device}, "
        f"{torch.get_num_threads()} threads, backend {args.backend}"
    )
    print(f"{'k':>6} {'questions/s':>12} {'ms/question':>12}")
    with use_backend(args.backend), torch.inference_mode():
        for k in args.ks:
            times = []
            for rep in range(args.warmup + args.reps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model.rank_answers(states, ids, mask, k)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if rep >= args.warmup:
                    times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(f"{k:>6} {args.batch / t:>12.1f} {1000 * t / args.batch:>12.2f}")


if __name__ == "__main__":
    main()
