"""Tokenizer for the language encoder, on the Rust ``tokenizers`` library (no ``transformers``).

Three sources are understood:

* ``tokenizer.json`` (any ``tokenizers`` tokenizer, e.g. saved by ``transformers``);
* ``vocab.txt`` (BERT WordPiece: BERT normaliser with optional lower-casing and accent
  stripping, BERT pre-tokeniser, ``[CLS] A [SEP] (B [SEP])``);
* ``vocab.json`` + ``merges.txt`` (RoBERTa byte-level BPE, ``<s> A </s> (</s> B </s>)``).

Example::

    tok = load_tokenizer("path/to/roberta-base")          # a folder, or one of the files
    batch = tok(["a photo of a cat", "two dogs"], max_tokens=30)
    batch.input_ids        # [2, T] long, padded with tok.pad_id
    batch.attention_mask   # [2, T] long, 1 = real token

Sequences longer than ``max_tokens`` (special tokens included) are truncated on the right.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

Padding = Literal["longest", "max_length"]

_ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}
_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ": the byte-level BPE marker of a leading space
_METASPACE = "\u2581"  # "▁": the SentencePiece marker of a leading space


@dataclass
class TokenizedBatch:
    """A padded batch of token ids.

    Attributes:
        input_ids: ``[B, T]`` long token ids, padded with the tokenizer's ``pad_id``.
        attention_mask: ``[B, T]`` long, 1 for real tokens and 0 for padding.
        token_type_ids: ``[B, T]`` long segment ids (0 for the first text, 1 for the pair).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor

    def to(self, device: torch.device | str) -> TokenizedBatch:
        """The batch with every tensor moved to ``device``."""
        return TokenizedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.token_type_ids.to(device),
        )


class TextTokenizer:
    """Batch tokenisation with truncation and padding, and the special token ids.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a post-processor that adds the special tokens
            (padding and truncation configured in it are replaced by ``max_tokens`` and the
            ``padding`` argument of :meth:`__call__`).
        max_tokens: default maximum length, special tokens included (default: the truncation
            length stored in the tokenizer, else 512).
        pad_token, cls_token, sep_token, mask_token, unk_token: names of the special tokens;
            by default the BERT (``[PAD]``...) or RoBERTa (``<pad>``...) name found in the
            vocabulary.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_tokens: int | None = None,
        pad_token: str | None = None,
        cls_token: str | None = None,
        sep_token: str | None = None,
        mask_token: str | None = None,
        unk_token: str | None = None,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer; got {type(tokenizer).__name__}")
        stored = tokenizer.truncation
        if max_tokens is None:
            max_tokens = int(stored["max_length"]) if stored else 512
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self._truncation: int | None = None
        self.max_tokens = _check_max_tokens(max_tokens)
        given = {
            "pad": pad_token,
            "cls": cls_token,
            "sep": sep_token,
            "mask": mask_token,
            "unk": unk_token,
        }
        self._special: dict[str, tuple[str, int] | None] = {}
        for role, name in given.items():
            if name is not None:
                token_id = tokenizer.token_to_id(name)
                if token_id is None:
                    raise ValueError(f"{role}_token {name!r} is not in the tokenizer's vocabulary")
                self._special[role] = (name, token_id)
                continue
            self._special[role] = None
            for candidate in _ROLE_CANDIDATES[role]:
                token_id = tokenizer.token_to_id(candidate)
                if token_id is not None:
                    self._special[role] = (candidate, token_id)
                    break
        self._word_start_table: torch.Tensor | None = None

    # ------------------------------------------------------------------------ construction

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: object) -> TextTokenizer:
        """Load a ``tokenizer.json``."""
        path = os.fspath(path)
        _require_file(path)
        return cls(Tokenizer.from_file(path), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_wordpiece(
        cls,
        vocab_txt: str | os.PathLike[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        **kwargs: object,
    ) -> TextTokenizer:
        """A BERT WordPiece tokenizer from ``vocab.txt`` (one token per line, id = line number).

        Args:
            lowercase: lower-case the text (``bert-*-uncased``).
            strip_accents: remove accents; ``None`` follows ``lowercase`` (as BERT does).
        """
        path = os.fspath(vocab_txt)
        _require_file(path)
        vocab = models.WordPiece.read_file(path)
        unk = next((t for t in _ROLE_CANDIDATES["unk"] if t in vocab), None)
        if unk is None:
            raise ValueError(f"{path}: a WordPiece vocabulary needs an [UNK] token")
        tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        for role in ("cls", "sep"):
            if _ROLE_CANDIDATES[role][0] not in vocab:
                raise ValueError(f"{path}: a BERT vocabulary needs {_ROLE_CANDIDATES[role][0]}")
        cls_tok, sep_tok = "[CLS]", "[SEP]"
        tok.post_processor = processors.BertProcessing(
            (sep_tok, vocab[sep_tok]), (cls_tok, vocab[cls_tok])
        )
        tok.add_special_tokens(
            [
                AddedToken(t, special=True)
                for c in _ROLE_CANDIDATES.values()
                for t in c
                if t in vocab
            ]
        )
        return cls(tok, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_bpe(
        cls,
        vocab_json: str | os.PathLike[str],
        merges_txt: str | os.PathLike[str],
        **kwargs: object,
    ) -> TextTokenizer:
        """A RoBERTa byte-level BPE tokenizer from ``vocab.json`` + ``merges.txt``."""
        vocab_path, merges_path = os.fspath(vocab_json), os.fspath(merges_txt)
        _require_file(vocab_path)
        _require_file(merges_path)
        vocab, merges = models.BPE.read_file(vocab_path, merges_path)
        for name in ("<s>", "</s>"):
            if name not in vocab:
                raise ValueError(f"{vocab_path}: a RoBERTa vocabulary needs {name}")
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", vocab["</s>"]),
            ("<s>", vocab["<s>"]),
            trim_offsets=True,
            add_prefix_space=False,
        )
        specials = []
        for name in ("<s>", "<pad>", "</s>", "<unk>", "<mask>"):
            if name in vocab:
                # as RobertaTokenizer: "<mask>" swallows the space before it
                specials.append(AddedToken(name, lstrip=name == "<mask>", special=True))
        tok.add_special_tokens(specials)
        return cls(tok, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], **kwargs: object) -> TextTokenizer:
        """Load from a folder holding ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``, or
        ``vocab.txt`` (checked in this order). A ``tokenizer_config.json`` next to ``vocab.txt``
        gives ``do_lower_case`` / ``strip_accents``."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist")
        join = lambda name: os.path.join(folder, name)  # noqa: E731
        if os.path.isfile(join("tokenizer.json")):
            return cls.from_file(join("tokenizer.json"), **kwargs)
        if os.path.isfile(join("vocab.json")) and os.path.isfile(join("merges.txt")):
            return cls.from_bpe(join("vocab.json"), join("merges.txt"), **kwargs)
        if os.path.isfile(join("vocab.txt")):
            options: dict[str, object] = {}
            if os.path.isfile(join("tokenizer_config.json")):
                with open(join("tokenizer_config.json"), encoding="utf-8") as f:
                    tc = json.load(f)
                if "do_lower_case" in tc:
                    options["lowercase"] = bool(tc["do_lower_case"])
                if tc.get("strip_accents") is not None:
                    options["strip_accents"] = bool(tc["strip_accents"])
            return cls.from_wordpiece(join("vocab.txt"), **options, **kwargs)  # type: ignore[arg-type]
        raise FileNotFoundError(
            f"{folder!r} holds no tokenizer: expected tokenizer.json, vocab.json + merges.txt, "
            "or vocab.txt"
        )

    # ------------------------------------------------------------------------ special tokens

    def _id(self, role: str) -> int:
        entry = self._special[role]
        if entry is None:
            raise ValueError(
                f"this tokenizer has no {role} token (looked for {_ROLE_CANDIDATES[role]}); "
                f"pass {role}_token= when building the TextTokenizer"
            )
        return entry[1]

    @property
    def pad_id(self) -> int:
        """Id of the padding token (``[PAD]`` / ``<pad>``)."""
        return self._id("pad")

    @property
    def cls_id(self) -> int:
        """Id of the sequence-start token (``[CLS]`` / ``<s>``)."""
        return self._id("cls")

    @property
    def sep_id(self) -> int:
        """Id of the separator / end token (``[SEP]`` / ``</s>``)."""
        return self._id("sep")

    @property
    def mask_id(self) -> int:
        """Id of the mask token (``[MASK]`` / ``<mask>``)."""
        return self._id("mask")

    @property
    def unk_id(self) -> int:
        """Id of the unknown token (``[UNK]`` / ``<unk>``)."""
        return self._id("unk")

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token this tokenizer has (pad, cls, sep, mask, unk)."""
        return sorted({e[1] for e in self._special.values() if e is not None})

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (do not change its padding/truncation)."""
        return self._tok

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"TextTokenizer({type(self._tok.model).__name__}, vocab_size={self.vocab_size}, "
            f"max_tokens={self.max_tokens})"
        )

    # ------------------------------------------------------------------------ encoding

    def _set_truncation(self, max_tokens: int) -> None:
        if self._truncation != max_tokens:
            self._tok.enable_truncation(max_tokens)
            self._truncation = max_tokens

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        max_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[int]:
        """Token ids of one text (or text pair), truncated to ``max_tokens``."""
        self._set_truncation(
            _check_max_tokens(self.max_tokens if max_tokens is None else max_tokens)
        )
        _check_text(text, "text")
        if pair is not None:
            _check_text(pair, "pair")
        return self._tok.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_tokens: int | None = None,
        padding: Padding = "longest",
        pad_to_multiple_of: int | None = None,
    ) -> TokenizedBatch:
        """Tokenise a batch, truncate each sequence to ``max_tokens`` and pad.

        Args:
            texts: one text or a list of ``B`` texts.
            pairs: optional second texts (``B`` of them), e.g. for sentence-pair tasks.
            max_tokens: maximum length including special tokens (default ``self.max_tokens``).
            padding: ``"longest"`` (to the longest sequence of the batch) or ``"max_length"``
                (to ``max_tokens``).
            pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
            :class:`TokenizedBatch` with ``[B, T]`` tensors.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("expected at least one text; got an empty list")
        for i, t in enumerate(texts):
            _check_text(t, f"texts[{i}]")
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
            for i, t in enumerate(pairs):
                _check_text(t, f"pairs[{i}]")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length'; got {padding!r}")
        limit = _check_max_tokens(self.max_tokens if max_tokens is None else max_tokens)
        self._set_truncation(limit)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self._tok.encode_batch(inputs)
        lengths = [len(e.ids) for e in encodings]
        length = limit if padding == "max_length" else max(lengths)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        b = len(encodings)
        pad = self.pad_id
        input_ids = torch.full((b, length), pad, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        token_type_ids = torch.zeros((b, length), dtype=torch.long)
        for i, (enc, n) in enumerate(zip(encodings, lengths)):
            input_ids[i, :n] = torch.tensor(enc.ids, dtype=torch.long)
            attention_mask[i, :n] = 1
            if pairs is not None:
                token_type_ids[i, :n] = torch.tensor(enc.type_ids, dtype=torch.long)
        return TokenizedBatch(input_ids, attention_mask, token_type_ids)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of one sequence of ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str | None]:
        """Token strings of ``ids`` (``None`` for an id outside the vocabulary)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self._tok.id_to_token(int(i)) for i in ids]

    # ------------------------------------------------------------------------ words

    def word_start_table(self) -> torch.Tensor:
        """``[V]`` bool: True for tokens that begin a word, False for word continuations.

        WordPiece: continuations start with ``##``. Byte-level BPE (RoBERTa): tokens starting
        with ``Ġ`` (a preceding space) begin a word; SentencePiece-style: ``▁``. Special tokens
        count as word starts.
        """
        if self._word_start_table is None:
            vocab = self._tok.get_vocab(with_added_tokens=True)
            table = torch.ones(self.vocab_size, dtype=torch.bool)
            model = self._tok.model
            specials = {t.content for t in self._tok.get_added_tokens_decoder().values()}
            if isinstance(model, models.WordPiece):
                prefix = model.continuing_subword_prefix or "##"
                for token, i in vocab.items():
                    table[i] = not token.startswith(prefix)
            else:
                marker = (
                    _BYTE_LEVEL_SPACE
                    if any(t.startswith(_BYTE_LEVEL_SPACE) for t in vocab)
                    else _METASPACE
                )
                for token, i in vocab.items():
                    table[i] = token.startswith(marker) or token in specials
            self._word_start_table = table
        return self._word_start_table

    def word_starts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` bool word-start flags of ``input_ids`` ``[B, T]`` (see
        :meth:`word_start_table`); input of the whole-word masking functions."""
        table = self.word_start_table().to(input_ids.device)
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= len(table)):
            raise ValueError(f"input_ids must be in [0, {len(table)})")
        return table[input_ids]


def load_tokenizer(path: str | os.PathLike[str], **kwargs: object) -> TextTokenizer:
    """A :class:`TextTokenizer` from a folder, a ``tokenizer.json`` or a ``vocab.txt``
    (keyword arguments go to :class:`TextTokenizer`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return TextTokenizer.from_folder(path, **kwargs)
    name = os.path.basename(path)
    if name.endswith(".json") and name != "vocab.json":
        return TextTokenizer.from_file(path, **kwargs)
    if name.endswith(".txt") and name != "merges.txt":
        return TextTokenizer.from_wordpiece(path, **kwargs)  # type: ignore[arg-type]
    if name in ("vocab.json", "merges.txt"):
        folder = os.path.dirname(path) or "."
        return TextTokenizer.from_bpe(
            os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), **kwargs
        )
    _require_file(path)
    raise ValueError(
        f"cannot tell the tokenizer format of {path!r}: expected a folder, a tokenizer.json, a "
        "vocab.txt, or vocab.json (with merges.txt beside it)"
    )


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist")


def _check_max_tokens(max_tokens: int) -> int:
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(
            f"max_tokens must be an int >= 2 (room for the special tokens); got {max_tokens!r}"
        )
    return max_tokens


def _check_text(text: object, where: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str; got {type(text).__name__}")


__all__ = ["Padding", "TextTokenizer", "TokenizedBatch", "load_tokenizer"]
