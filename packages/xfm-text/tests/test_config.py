"""TextEncoderConfig: published defaults, overrides and validation messages."""

from __future__ import annotations

import pytest

from xfm.text import TextEncoderConfig


def test_bert_base_defaults_match_the_published_model():
    c = TextEncoderConfig.bert_base()
    assert (c.vocab_size, c.width, c.layers, c.heads, c.ffn_dim) == (30522, 768, 12, 12, 3072)
    assert (c.max_positions, c.type_vocab_size, c.pad_token_id) == (512, 2, 0)
    assert c.layer_norm_eps == 1e-12 and c.position_style == "absolute"
    assert c.max_length == 512


def test_roberta_base_defaults_match_the_published_model():
    c = TextEncoderConfig.roberta_base()
    assert (c.vocab_size, c.width, c.layers, c.heads, c.ffn_dim) == (50265, 768, 12, 12, 3072)
    assert (c.max_positions, c.type_vocab_size, c.pad_token_id) == (514, 1, 1)
    assert c.layer_norm_eps == 1e-5 and c.position_style == "roberta"
    assert c.max_length == 512  # positions 2..513


def test_overrides_replace_fields_and_keep_the_rest():
    c = TextEncoderConfig.roberta_base(layers=2, width=48, heads=4)
    assert (c.layers, c.width, c.heads, c.pad_token_id) == (2, 48, 4, 1)
    assert c.to_dict()["layers"] == 2


def test_unknown_field_names_the_field_and_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown TextEncoderConfig field\(s\) \['depth'\].*width"):
        TextEncoderConfig.bert_base(depth=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 50, "heads": 4}, "not divisible"),
        ({"layers": 0}, "layers must be a positive int"),
        ({"pad_token_id": 99, "vocab_size": 99}, "pad_token_id"),
        ({"position_style": "rotary"}, "position_style"),
        ({"position_style": "roberta", "pad_token_id": 1, "max_positions": 2}, "max_positions"),
        ({"dropout": 1.0}, "dropout"),
        ({"type_vocab_size": -1}, "type_vocab_size"),
        ({"backend": "flash"}, "backend must be None or one of"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextEncoderConfig(**kwargs)
