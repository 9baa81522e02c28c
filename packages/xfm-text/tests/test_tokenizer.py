"""TextTokenizer against the independent (pure Python) Hugging Face tokenizers."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models

from xfm.text import TextTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "Hello, world!",
    "A photo of a cat sitting on a mat.",
    "Crème brûlée at the café: naïve façade, Ångström, São Paulo.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "日本語のテキスト, 中文字符 and emoji 🤖🎉 mixed in",
    "  multiple   spaces\tand\nnew lines  ",
    "UPPER case and MiXeD CaSe, numbers 3.14159 and 1,000,000",
    "don't won't it's y'all — dashes – and “quotes”",
    "a " * 200,
    "x",
    "special tokens in text: a [MASK] on the mat, A[MASK]b [SEP] [mask]",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _ref(tok, texts, max_tokens, pairs=None):
    out = tok(
        texts,
        pairs,
        truncation=True,
        max_length=max_tokens,
        padding=True,
        return_tensors="pt",
        return_token_type_ids=True,
    )
    return out["input_ids"], out["attention_mask"], out["token_type_ids"]


def _assert_same(batch, ref, pairs=False):
    ids, mask, types = ref
    assert torch.equal(batch.input_ids, ids)
    assert torch.equal(batch.attention_mask, mask)
    if pairs:
        assert torch.equal(batch.token_type_ids, types)


@pytest.mark.parametrize("source", ["folder", "tokenizer.json", "vocab.txt"])
@pytest.mark.parametrize("max_tokens", [8, 64])
def test_wordpiece_ids_equal_hf_python_bert_tokenizer(minilm_dir, source, max_tokens):
    ref_tok = transformers.BertTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    path = minilm_dir if source == "folder" else minilm_dir / source
    tok = load_tokenizer(path)
    _assert_same(tok(SENTENCES, max_tokens=max_tokens), _ref(ref_tok, SENTENCES, max_tokens))
    # Pairs: the Python tokenizer and the Rust one (what transformers uses by default)
    # truncate the longer text differently; ours follows the Rust one.
    fast = transformers.BertTokenizerFast(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    pairs = list(reversed(SENTENCES))
    _assert_same(
        tok(SENTENCES, pairs, max_tokens=max_tokens),
        _ref(fast, SENTENCES, max_tokens, pairs),
        pairs=True,
    )
    _assert_same(tok(SENTENCES, pairs, max_tokens=512), _ref(ref_tok, SENTENCES, 512, pairs), True)
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id) == (
        ref_tok.pad_token_id,
        ref_tok.cls_token_id,
        ref_tok.sep_token_id,
        ref_tok.mask_token_id,
        ref_tok.unk_token_id,
    )
    assert tok.vocab_size == len(ref_tok)


def test_stored_padding_of_tokenizer_json_is_not_applied(minilm_dir):
    tok = TextTokenizer.from_file(minilm_dir / "tokenizer.json")
    assert tok.max_tokens == 128  # the truncation length stored in the file
    batch = tok(["short text", "a bit longer text here"])
    assert batch.input_ids.shape == (2, 7)  # padded to the longest (5 words + 2), not to 128


def test_cased_wordpiece_vocab_keeps_case_and_accents(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Caf", "##é", "café", "cat", "Cat"]
    vocab += ["the", "The", "##s", ",", "!", "é"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    ref_tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    tok = TextTokenizer.from_wordpiece(tmp_path / "vocab.txt", lowercase=False)
    texts = ["The Café cats, the café!", "Cat cats CAT", "é the"]
    _assert_same(tok(texts), _ref(ref_tok, texts, 32))


@pytest.mark.parametrize("max_tokens", [6, 40])
def test_byte_level_bpe_ids_equal_hf_python_roberta_tokenizer(bpe_files, max_tokens):
    vocab, merges = bpe_files
    ref_tok = transformers.RobertaTokenizer(str(vocab), str(merges))
    for tok in (TextTokenizer.from_bpe(vocab, merges), load_tokenizer(vocab.parent)):
        texts = [*SENTENCES, "a photo of a <mask> on a mat", "the <mask>"]
        _assert_same(tok(texts, max_tokens=max_tokens), _ref(ref_tok, texts, max_tokens))
        pairs = list(reversed(texts))
        _assert_same(tok(texts, pairs, max_tokens=512), _ref(ref_tok, texts, 512, pairs))
        fast = transformers.RobertaTokenizerFast(str(vocab), str(merges))
        _assert_same(tok(texts, pairs, max_tokens=max_tokens), _ref(fast, texts, max_tokens, pairs))
        assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat"


def test_truncation_and_max_length_padding(minilm_dir):
    tok = load_tokenizer(minilm_dir, max_tokens=10)
    batch = tok(["word " * 50, "two words"])
    assert batch.input_ids.shape == (2, 10)
    assert batch.input_ids[0, -1] == tok.sep_id and batch.input_ids[0, 0] == tok.cls_id
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1] + [0] * 6
    assert tok(["hi"], padding="max_length", max_tokens=7).input_ids.shape == (1, 7)
    assert tok(["hi"], pad_to_multiple_of=8).input_ids.shape == (1, 8)
    assert len(tok.encode("word " * 50, max_tokens=5)) == 5


def test_word_starts_follow_wordpiece_and_byte_level_markers(minilm_dir, bpe_files):
    tok = load_tokenizer(minilm_dir)
    ids = tok(["unbelievably antidisestablishmentarianism"]).input_ids
    tokens = tok.convert_ids_to_tokens(ids[0])
    starts = tok.word_starts(ids)[0].tolist()
    assert starts == [not t.startswith("##") for t in tokens]
    assert not all(starts) and starts[0]

    bpe = TextTokenizer.from_bpe(*bpe_files)
    ids = bpe(["unbelievable results reported"]).input_ids
    tokens = bpe.convert_ids_to_tokens(ids[0])
    starts = bpe.word_starts(ids)[0].tolist()
    assert starts == [t.startswith("Ġ") or t in SPECIALS for t in tokens]


def test_bad_inputs_raise_clear_errors(minilm_dir, tmp_path):
    tok = load_tokenizer(minilm_dir)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str; got int"):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one text"):
        tok([])
    with pytest.raises(ValueError, match="got 2 texts but 1 pairs"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_tokens must be an int >= 2"):
        tok(["a"], max_tokens=1)
    with pytest.raises(ValueError, match="padding must be"):
        tok(["a"], padding="left")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing" / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    bare = TextTokenizer(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="has no mask token"):
        _ = bare.mask_id
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        TextTokenizer(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")), mask_token="<m>")
