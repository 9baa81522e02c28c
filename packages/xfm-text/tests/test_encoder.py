"""The text encoder on its own: construction, registry, invariances, checkpointing, bad input."""

from __future__ import annotations

import pytest
import torch

from xfm.core import registry
from xfm.core.attention import runnable_backends, use_backend
from xfm.core.layers import MLMHead as CoreMLMHead
from xfm.text import (
    BertEncoder,
    MLMHead,
    RobertaEncoder,
    TextEncoder,
    TextEncoderConfig,
    gather_positions,
    roberta_position_ids,
)

SMALL = {"vocab_size": 50, "width": 32, "layers": 2, "heads": 4, "ffn_dim": 48}


def _small(cls=RobertaEncoder, **kw):
    return cls(**{**SMALL, "max_positions": 34, **kw}).eval()


@pytest.mark.parametrize(("name", "cls"), [("bert", BertEncoder), ("roberta", RobertaEncoder)])
def test_registry_creates_each_encoder_with_config_overrides(name, cls):
    encoder = registry.create("text_encoder", name, layers=2, width=48, heads=4, ffn_dim=96)
    assert type(encoder) is cls
    assert encoder.width == 48 and encoder.config.layers == 2 and len(encoder.layers) == 2
    base = TextEncoderConfig.bert_base() if name == "bert" else TextEncoderConfig.roberta_base()
    assert encoder.config.vocab_size == base.vocab_size
    assert encoder.config.pad_token_id == base.pad_token_id
    assert encoder.embeddings.word.weight.shape == (base.vocab_size, 48)


def test_config_object_and_dict_and_overrides_compose():
    cfg = TextEncoderConfig.roberta_base(**SMALL)
    a = TextEncoder(cfg, layers=1)
    b = RobertaEncoder({"layers": 1, **{k: v for k, v in SMALL.items() if k != "layers"}})
    assert a.config == b.config
    assert cfg.layers == 2  # the given config object is not modified


def test_unknown_override_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown TextEncoderConfig field"):
        RobertaEncoder(num_layers=2)


def test_roberta_position_ids_follow_the_official_formula():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expected = torch.tensor([[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
    assert torch.equal(roberta_position_ids(ids, pad_token_id=1), expected)


@pytest.mark.parametrize("cls", [BertEncoder, RobertaEncoder])
@pytest.mark.parametrize("backend", runnable_backends("cpu"))
def test_real_tokens_do_not_see_padding(cls, backend):
    """Outputs at real positions of a padded batch equal those of the unpadded sequences."""
    torch.manual_seed(0)
    enc = _small(cls)
    pad = enc.config.pad_token_id
    seqs = [torch.randint(3, 50, (n,)) for n in (7, 4, 1)]
    t = 9
    ids = torch.full((3, t), pad)
    mask = torch.zeros(3, t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    with torch.no_grad(), use_backend(backend):
        batched = enc(ids, mask)
        for i, s in enumerate(seqs):
            alone = enc(s[None])
            torch.testing.assert_close(batched[i, : len(s)], alone[0], atol=1e-5, rtol=1e-5)


def test_bool_and_integer_masks_agree_and_all_ones_equals_no_mask():
    enc = _small()
    ids = torch.randint(3, 50, (2, 6))
    with torch.no_grad():
        a = enc(ids, torch.ones(2, 6, dtype=torch.long))
        b = enc(ids, torch.ones(2, 6, dtype=torch.bool))
        c = enc(ids)
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
        d = enc(ids, mask)
        e = enc(ids, mask.bool())
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, c)
    torch.testing.assert_close(d, e)


def test_encode_states_runs_the_layer_stack_on_given_states():
    enc = _small()
    ids = torch.randint(3, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    with torch.no_grad():
        states = enc.embeddings(ids)
        torch.testing.assert_close(enc.encode_states(states, mask), enc(ids, mask))
    with pytest.raises(ValueError, match=r"hidden states must be \[B, T, 32\]"):
        enc.encode_states(torch.zeros(2, 5, 16))


def test_inputs_embeds_equal_ids_for_absolute_positions():
    enc = _small(BertEncoder)
    ids = torch.randint(3, 50, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(enc(inputs_embeds=enc.embeddings.word(ids)), enc(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        enc(ids, inputs_embeds=enc.embeddings.word(ids))


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    enc = _small(dropout=0.0, attn_dropout=0.0).train()
    ids, mask = torch.randint(3, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0

    def run():
        enc.zero_grad()
        out = enc(ids, mask)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}

    ref_out, ref_grads = run()
    enc.set_grad_checkpointing(True)
    assert enc.grad_checkpointing
    calls = []
    handle = enc.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    out, grads = run()
    handle.remove()
    assert len(calls) == 2  # forward, then recomputation in the backward pass
    torch.testing.assert_close(out, ref_out)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], msg=name)


def test_padding_row_of_the_word_embedding_gets_no_gradient():
    enc = _small(dropout=0.0).train()
    ids = torch.tensor([[0, 5, 6, 1, 1]])
    out = enc(ids, (ids != 1).long())
    # a random projection: the plain sum of LayerNorm outputs has an exactly-zero gradient
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.count_nonzero(enc.embeddings.word.weight.grad[1]) == 0
    assert torch.count_nonzero(enc.embeddings.word.weight.grad[5]) > 0


def test_out_of_vocabulary_ids_raise_with_position_and_range():
    enc = _small()
    ids = torch.tensor([[0, 5, 50, 2]])
    with pytest.raises(ValueError, match=r"token id 50 at input_ids\[0, 2\].*\[0, 50\)"):
        enc(ids)
    with pytest.raises(ValueError, match=r"token id -1"):
        enc(torch.tensor([[0, -1]]))
    with pytest.raises(TypeError, match="integer tensor"):
        enc(torch.zeros(1, 3))


@pytest.mark.parametrize(("cls", "limit"), [(BertEncoder, 34), (RobertaEncoder, 32)])
def test_too_long_sequences_raise_and_the_limit_is_usable(cls, limit):
    enc = _small(cls)
    assert enc.config.max_length == limit
    with torch.no_grad():
        assert enc(torch.full((1, limit), 5)).shape == (1, limit, 32)
    with pytest.raises(
        ValueError, match=rf"sequence length {limit + 1} exceeds .* at most {limit}"
    ):
        enc(torch.full((1, limit + 1), 5))


def test_wrong_attention_mask_shape_and_token_types():
    enc = _small(BertEncoder)
    ids = torch.randint(3, 50, (2, 5))
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\] = \[2, 5\]"):
        enc(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, type_vocab_size=2\)"):
        enc(ids, token_type_ids=torch.full((2, 5), 2))


def test_mlm_head_is_tied_and_gathers_positions():
    enc = _small()
    head = MLMHead.for_encoder(enc)
    assert isinstance(head, CoreMLMHead)  # same parameter names as the core head
    assert head.is_tied_to(enc.embeddings.word)
    assert head.decoder.weight is enc.embeddings.word.weight
    untied = MLMHead.for_encoder(enc, tie=False)
    assert not untied.is_tied_to(enc.embeddings.word)
    hidden = torch.randn(2, 6, 32)
    pos = torch.tensor([[1, 4, 0], [5, 0, 0]])
    picked = gather_positions(hidden, pos)
    assert torch.equal(picked[0, 1], hidden[0, 4]) and torch.equal(picked[1, 0], hidden[1, 5])
    with torch.no_grad():
        torch.testing.assert_close(head(hidden, pos), head(hidden)[torch.arange(2)[:, None], pos])
    with pytest.raises(ValueError, match=r"positions must be in \[0, T=6\)"):
        gather_positions(hidden, torch.tensor([[6], [0]]))
    with pytest.raises(ValueError, match="cannot tie"):
        head.tie_weights(torch.nn.Embedding(3, 32))
