"""xfm.text runs without its optional packages: transformers, timm and mosaicml-streaming are
made unimportable in a fresh interpreter, which then tokenises, masks, encodes, loads real
Hugging Face weights from a folder and writes them back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("transformers", "timm", "streaming")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import torch
    from xfm.core import registry
    from xfm.text import (
        MLMHead, caption_mask, from_hf, load_tokenizer, save_hf, text_mlm_mask,
    )

    minilm, out = sys.argv[1], sys.argv[2]
    tok = load_tokenizer(minilm)
    batch = tok(["A man is eating food.", "Crème brûlée"], max_tokens=16)
    encoder, head = from_hf(minilm)  # config.json + model.safetensors, no transformers
    assert head is None and encoder.config.layers == 6
    g = torch.Generator().manual_seed(0)
    masked = text_mlm_mask(
        batch.input_ids, batch.attention_mask, generator=g, mask_token_id=tok.mask_id,
        vocab_size=tok.vocab_size, word_starts=tok.word_starts(batch.input_ids),
        special_ids=tok.special_ids,
    )
    cap = caption_mask(
        batch.input_ids, batch.attention_mask, generator=g, mask_token_id=tok.mask_id,
        vocab_size=tok.vocab_size,
    )
    head = MLMHead.for_encoder(encoder)
    with torch.no_grad():
        hidden = encoder.eval()(masked.input_ids, batch.attention_mask)
        logits = head(hidden, cap.masked_pos)
    assert hidden.shape == (2, batch.input_ids.shape[1], 384)
    assert logits.shape == (2, 15, tok.vocab_size)
    save_hf(out, encoder, head)
    again, head2 = from_hf(out)
    assert head2 is not None and head2.is_tied_to(again.embeddings.word)
    small = registry.create("text_encoder", "roberta", layers=1, width=32, heads=2, ffn_dim=64)
    assert small(torch.tensor([[0, 5, 2]])).shape == (1, 3, 32)
    heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not heavy, heavy
    print("ok")
    """
)


@pytest.mark.slow
def test_text_pipeline_runs_with_optional_packages_unimportable(minilm_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(minilm_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
