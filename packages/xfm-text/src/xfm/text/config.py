"""Configuration of the BERT/RoBERTa-style language encoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from xfm.core.attention import BACKENDS

PositionStyle = Literal["absolute", "roberta"]
POSITION_STYLES: tuple[str, ...] = ("absolute", "roberta")


@dataclass
class TextEncoderConfig:
    """Dimensions and options of :class:`xfm.text.TextEncoder`.

    The defaults are bert-base; :meth:`bert_base` and :meth:`roberta_base` give the two published
    base configurations.

    Attributes:
        vocab_size: number of token ids (word embedding rows).
        width: hidden size ``D``.
        layers: number of post-LN transformer layers.
        heads: attention heads (``width`` must be divisible by it).
        ffn_dim: hidden size of the feed-forward block.
        max_positions: rows of the position embedding table.
        type_vocab_size: rows of the token-type embedding table (0: no token-type embedding).
        pad_token_id: id of the padding token (its word embedding row gets no gradient; with
            ``position_style="roberta"`` it is also the position id of padded tokens).
        layer_norm_eps: epsilon of every LayerNorm.
        dropout: dropout on embeddings and residual branches.
        attn_dropout: dropout on attention probabilities.
        act: activation of the feed-forward block and the MLM head (``gelu`` = exact erf GELU).
        position_style: ``"absolute"`` (BERT: positions ``0..T-1``) or ``"roberta"`` (positions
            count real tokens starting at ``pad_token_id + 1``; padded tokens get
            ``pad_token_id``).
        gradient_checkpointing: recompute each layer in the backward pass (training only).
        backend: attention backend (``eager | sdpa | xformers | auto``; ``None``: the default
            of :mod:`xfm.core.attention`).
        init_std: standard deviation of the normal initialisation of weights (BERT: 0.02).
    """

    vocab_size: int = 30522
    width: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    act: str = "gelu"
    position_style: PositionStyle = "absolute"
    gradient_checkpointing: bool = False
    backend: str | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "layers", "heads", "ffn_dim", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TextEncoderConfig.{name} must be a positive int; got {value!r}")
        if self.type_vocab_size < 0:
            raise ValueError(
                f"TextEncoderConfig.type_vocab_size must be >= 0; got {self.type_vocab_size}"
            )
        if self.width % self.heads:
            raise ValueError(
                f"TextEncoderConfig: width {self.width} is not divisible by heads {self.heads}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"TextEncoderConfig.pad_token_id must be in [0, vocab_size={self.vocab_size}); "
                f"got {self.pad_token_id}"
            )
        if self.position_style not in POSITION_STYLES:
            raise ValueError(
                f"TextEncoderConfig.position_style must be one of {POSITION_STYLES}; "
                f"got {self.position_style!r}"
            )
        if self.position_style == "roberta" and self.max_positions <= self.pad_token_id + 1:
            raise ValueError(
                "TextEncoderConfig: roberta-style positions start at pad_token_id + 1 = "
                f"{self.pad_token_id + 1}, so max_positions must be larger; got {self.max_positions}"
            )
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(
                f"TextEncoderConfig.backend must be None or one of {BACKENDS}; got {self.backend!r}"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TextEncoderConfig.{name} must be in [0, 1); got {value!r}")

    @property
    def max_length(self) -> int:
        """Longest sequence ``T`` the position table can encode."""
        if self.position_style == "roberta":
            return self.max_positions - self.pad_token_id - 1
        return self.max_positions

    @classmethod
    def bert_base(cls, **overrides: Any) -> TextEncoderConfig:
        """bert-base(-uncased): 30522 tokens, 768 wide, 12 layers, 12 heads, pad id 0."""
        return cls.from_dict(overrides, base=cls())

    @classmethod
    def roberta_base(cls, **overrides: Any) -> TextEncoderConfig:
        """roberta-base (the X-FM language encoder): 50265 tokens, 514 positions, pad id 1."""
        base = cls(
            vocab_size=50265,
            max_positions=514,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
            position_style="roberta",
        )
        return cls.from_dict(overrides, base=base)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], base: TextEncoderConfig | None = None
    ) -> TextEncoderConfig:
        """A config from ``base`` (default: bert-base) with ``values`` replaced.

        Raises:
            TypeError: a key of ``values`` is not a field of :class:`TextEncoderConfig`.
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError(
                f"unknown TextEncoderConfig field(s) {unknown}; expected some of {fields}"
            )
        return dataclasses.replace(base if base is not None else cls(), **values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)


__all__ = ["POSITION_STYLES", "PositionStyle", "TextEncoderConfig"]
