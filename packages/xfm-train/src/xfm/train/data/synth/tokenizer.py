"""A tiny RoBERTa-style byte-level BPE tokenizer trained on the synthetic corpus."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["ROBERTA_SPECIAL_TOKENS", "train_bpe_tokenizer"]

ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
"""Special tokens in RoBERTa order: ids 0..4 are cls/bos, pad, sep/eos, unk, mask."""


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000) -> Path:
    """Train a byte-level BPE on ``texts``; write ``tokenizer.json``, ``vocab.json``, ``merges.txt``.

    The tokenizer adds ``<s> ... </s>`` around each text like RoBERTa (post-processor).

    Returns:
        ``out_dir``.
    """
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        list(texts),
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=ROBERTA_SPECIAL_TOKENS,
        show_progress=False,
    )
    tok._tokenizer.post_processor = RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    tok.save_model(str(out))
    tok.save(str(out / "tokenizer.json"))
    return out
