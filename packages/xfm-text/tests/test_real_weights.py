"""Real BERT weights (all-MiniLM-L6-v2): our tokenizer + encoder reproduce transformers'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xfm.core.attention import runnable_backends, use_backend
from xfm.text import BertEncoder, from_hf, load_tokenizer

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Crème brûlée at the café — naïve façade, Ångström, São Paulo, Zürich.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "日本語のテキスト and emoji 🤖",
    "A sentence that is long enough to be truncated by the tokenizer " * 12,
]


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: mean over real tokens, then L2 normalisation."""
    m = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", runnable_backends("cpu"))
def test_minilm_sentence_embeddings_equal_transformers(minilm_dir, backend):
    ref_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    ref_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ref = ref_tok(SENTENCES, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_hidden = ref_model(**ref).last_hidden_state
    ref_emb = _mean_pool(ref_hidden, ref["attention_mask"])

    tok = load_tokenizer(minilm_dir)
    batch = tok(SENTENCES, max_tokens=64)
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])

    encoder, head = from_hf(str(minilm_dir))  # config.json + model.safetensors
    assert isinstance(encoder, BertEncoder) and head is None
    assert (encoder.config.layers, encoder.width, encoder.config.vocab_size) == (6, 384, 30522)
    with torch.no_grad(), use_backend(backend):
        hidden = encoder.eval()(batch.input_ids, batch.attention_mask)
    emb = _mean_pool(hidden, batch.attention_mask)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(emb, ref_emb, atol=1e-5, rtol=0)
    # sanity: the two "man eating" sentences are the most similar pair
    sims = emb[:3] @ emb[:3].T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]
