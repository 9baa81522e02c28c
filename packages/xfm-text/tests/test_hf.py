"""Parity with Hugging Face BERT / RoBERTa and the import / export of their weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.attention import runnable_backends, use_backend
from xfm.core.checkpoint import CheckpointMismatchError, KeyMapper, load_into
from xfm.core.layers import PostLNLayer
from xfm.text import (
    BertEncoder,
    MLMHead,
    RobertaEncoder,
    config_from_hf,
    from_hf,
    load_hf_state_dict,
    save_hf,
    to_hf_state_dict,
)
from xfm.text.hf import (
    encoder_drop_patterns,
    encoder_key_rules,
    hf_key_mapper,
    mlm_head_key_rules,
)

transformers = pytest.importorskip("transformers")

ARCHS = ["bert", "roberta"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _hf_outputs(hf, ids, mask, **kw):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
    return out.hidden_states[-1], out.logits


@pytest.mark.parametrize("backend", runnable_backends("cpu"))
@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_and_logits_equal_hf_for_every_backend(
    arch, backend, make_hf_mlm, make_batch
):
    hf = make_hf_mlm(arch)
    enc, head = from_hf(hf)
    enc.eval()
    assert isinstance(enc, BertEncoder if arch == "bert" else RobertaEncoder)
    assert head is not None and head.is_tied_to(enc.embeddings.word)
    ids, mask = make_batch(arch)
    kw = {}
    if arch == "bert":
        kw["token_type_ids"] = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids).clone()
    ref_hidden, ref_logits = _hf_outputs(hf, ids, mask, **kw)
    with torch.no_grad(), use_backend(backend):
        hidden = enc(ids, mask, **kw)
        logits = head(hidden)
    torch.testing.assert_close(hidden, ref_hidden, **TOL)
    torch.testing.assert_close(logits, ref_logits, **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_and_logits_equal_hf_on_cuda_for_every_backend(arch, make_hf_mlm, make_batch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    hf = make_hf_mlm(arch).cuda()
    enc, head = from_hf(hf)
    enc.eval()
    ids, mask = (t.cuda() for t in make_batch(arch))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 matmuls in both models
    try:
        ref_hidden, ref_logits = _hf_outputs(hf, ids, mask)
        backends = runnable_backends("cuda")
        for backend in backends:
            with torch.no_grad(), use_backend(backend):
                hidden = enc(ids, mask)
                logits = head(hidden)
            torch.testing.assert_close(hidden, ref_hidden, **TOL, msg=backend)
            torch.testing.assert_close(logits, ref_logits, **TOL, msg=backend)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_embeds_equal_hf(arch, make_hf_mlm, make_batch):
    hf = make_hf_mlm(arch)
    enc, _ = from_hf(hf, with_mlm_head=False)
    enc.eval()
    ids, mask = make_batch(arch)
    embeds = torch.randn(*ids.shape, 32)
    base = hf.bert if arch == "bert" else hf.roberta
    with torch.no_grad():
        ref = base(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        ours = enc(inputs_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_mlm_loss_gradients_equal_hf(arch, make_hf_mlm, make_batch):
    """Same loss and the same gradient for every parameter (the tied decoder included)."""
    hf = make_hf_mlm(arch, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    enc, head = from_hf(hf)
    enc.train()
    ids, mask = make_batch(arch)
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 3], labels[2, 1] = 7, 11, 13

    ref = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    ref.backward()
    ours = F.cross_entropy(head(enc(ids, mask)).flatten(0, 1), labels.flatten())
    ours.backward()
    torch.testing.assert_close(ours, ref, **TOL)

    hf_grads = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
    mapped = hf_key_mapper(arch, encoder_prefix=f"{arch}.").apply(hf_grads).state
    ours_grads = {f"encoder.{n}": p.grad for n, p in enc.named_parameters()}
    ours_grads |= {f"mlm_head.{n}": p.grad for n, p in head.named_parameters()}
    ours_grads.pop("mlm_head.decoder.weight")  # the word embedding, compared under its name
    assert set(mapped) == set(ours_grads)
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, mapped[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_strictly_into_hf_and_round_trips(arch, make_hf_config, make_batch):
    torch.manual_seed(1)
    hf_cfg = make_hf_config(arch)
    enc = (BertEncoder if arch == "bert" else RobertaEncoder)(config_from_hf(hf_cfg)).eval()
    head = MLMHead.for_encoder(enc)
    with torch.no_grad():
        head.bias.normal_()
    state = to_hf_state_dict(enc, head)
    hf_cls = transformers.BertForMaskedLM if arch == "bert" else transformers.RobertaForMaskedLM
    hf = hf_cls(hf_cfg).eval()
    hf.load_state_dict(state, strict=True)
    ids, mask = make_batch(arch)
    ref_hidden, ref_logits = _hf_outputs(hf, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids, mask), ref_hidden, **TOL)
        torch.testing.assert_close(head(enc(ids, mask)), ref_logits, **TOL)

    enc2, head2 = from_hf(hf)
    for (n, a), (_, b) in zip(enc.state_dict().items(), enc2.state_dict().items()):
        assert torch.equal(a, b), n
    for (n, a), (_, b) in zip(head.state_dict().items(), head2.state_dict().items()):
        assert torch.equal(a, b), n

    base_state = to_hf_state_dict(enc)  # BertModel / RobertaModel layout, no pooler
    base_cls = transformers.BertModel if arch == "bert" else transformers.RobertaModel
    base_cls(hf_cfg, add_pooling_layer=False).load_state_dict(base_state, strict=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_hf_folder_loads_in_transformers_and_back(arch, tmp_path, make_hf_mlm, make_batch):
    hf = make_hf_mlm(arch)
    enc, head = from_hf(hf)
    save_hf(tmp_path / "ours", enc.eval(), head)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    ids, mask = make_batch(arch)
    torch.testing.assert_close(_hf_outputs(reloaded, ids, mask)[1], _hf_outputs(hf, ids, mask)[1])

    # transformers' own save_pretrained (safetensors, tied decoder weight left out)
    hf.save_pretrained(tmp_path / "theirs")
    enc2, head2 = from_hf(str(tmp_path / "theirs"))
    assert head2 is not None and head2.is_tied_to(enc2.embeddings.word)
    with torch.no_grad():
        torch.testing.assert_close(
            head2(enc2.eval()(ids, mask)), _hf_outputs(hf, ids, mask)[1], **TOL
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_bare_model_state_dict_with_pooler_loads_without_head(arch, make_hf_config, make_batch):
    torch.manual_seed(0)
    cfg = make_hf_config(arch)
    hf_cls = transformers.BertModel if arch == "bert" else transformers.RobertaModel
    hf = hf_cls(cfg).eval()  # has a pooler: dropped
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial LayerNorm / bias values
            p.add_(0.05 * torch.randn_like(p))
    enc, head = from_hf(hf)
    assert head is None
    assert isinstance(enc, BertEncoder if arch == "bert" else RobertaEncoder)
    ids, mask = make_batch(arch)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(enc.eval()(ids, mask), ref, **TOL)
    with pytest.raises(ValueError, match="has no MLM head"):
        from_hf(hf, with_mlm_head=True)
    with pytest.raises(ValueError, match="carries no config"):
        from_hf(hf.state_dict())
    enc3, _ = from_hf(hf.state_dict(), config=cfg)  # a raw state dict with its config
    assert torch.equal(enc3.embeddings.word.weight, enc.embeddings.word.weight)


def test_untied_decoder_is_detected_and_a_tied_head_refuses_it(make_hf_mlm, make_batch):
    hf = make_hf_mlm("roberta", tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.decoder.weight.normal_()
    enc, head = from_hf(hf)
    assert head is not None and not head.is_tied_to(enc.embeddings.word)
    ids, mask = make_batch("roberta")
    with torch.no_grad():
        torch.testing.assert_close(head(enc.eval()(ids, mask)), _hf_outputs(hf, ids, mask)[1])
    tied_head = MLMHead.for_encoder(enc)
    with pytest.raises(ValueError, match="differs from the word embeddings"):
        load_hf_state_dict(enc, hf.state_dict(), tied_head)


def test_wrong_shapes_and_missing_layers_are_reported_by_key(make_hf_mlm):
    hf = make_hf_mlm("bert")
    wider = BertEncoder(vocab_size=99, width=48, layers=2, heads=4, ffn_dim=37, max_positions=64)
    with pytest.raises(CheckpointMismatchError) as err:
        load_hf_state_dict(wider, hf.state_dict())
    message = str(err.value)
    assert "encoder.embeddings.word.weight" in message
    assert "checkpoint [99, 32] vs model [99, 48]" in message
    deeper = BertEncoder(vocab_size=99, width=32, layers=3, heads=4, ffn_dim=37, max_positions=64)
    with pytest.raises(CheckpointMismatchError) as err:
        load_hf_state_dict(deeper, hf.state_dict())
    assert "encoder.layers.2." in str(err.value) and "missing" in str(err.value)
    assert err.value.report.missing and not err.value.report.unexpected


def test_unsupported_hf_configs_are_refused(make_hf_config):
    cfg = make_hf_config("bert").to_dict()
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        config_from_hf({**cfg, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="cannot import a Hugging Face 'gpt2' model"):
        config_from_hf({**cfg, "model_type": "gpt2"})


def test_cross_attention_rules_match_a_hf_decoder_layer_stack(make_hf_config):
    """The encoder rules also map ``crossattention.*`` onto PostLNLayer(cross_attention=True),
    as the fusion encoder needs (checked against a HF BERT with cross-attention)."""
    torch.manual_seed(0)
    cfg = make_hf_config("bert", is_decoder=True, add_cross_attention=True)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(
                PostLNLayer(32, 4, 37, cross_attention=True, cross_dim=32) for _ in range(2)
            )

    stack = Stack().eval()
    mapper = KeyMapper(
        encoder_key_rules("", ""), drop=[*encoder_drop_patterns(""), r"^embeddings\."]
    )
    load_into(stack, hf.state_dict(), mapper=mapper)
    ids = torch.randint(3, 99, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    ctx = torch.randn(2, 5, 32)
    ctx_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ref = hf(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=ctx,
            encoder_attention_mask=ctx_mask,
        ).last_hidden_state
        x = hf.embeddings(input_ids=ids)
        for layer in stack.layers:
            x = layer(
                x, key_mask=mask.bool(), context=ctx, context_mask=ctx_mask.bool(), causal=True
            )
    torch.testing.assert_close(x, ref, **TOL)


def test_official_xfm_text_encoder_and_text_mlm_head_match_golden(golden_dir):
    """The public rules load the official X-FM ``text_encoder.*`` and reproduce its outputs."""
    from safetensors.torch import load_file

    cfg = json.loads((golden_dir / "config.json").read_text())["text"]
    state = load_file(golden_dir / "model.safetensors")
    inputs = load_file(golden_dir / "inputs.safetensors")
    outputs = load_file(golden_dir / "outputs.safetensors")
    enc = RobertaEncoder(
        vocab_size=cfg["vocab_size"],
        width=cfg["width"],
        layers=cfg["layers"],
        heads=cfg["heads"],
        ffn_dim=cfg["intermediate_size"],
        max_positions=cfg["max_position_embeddings"],
        type_vocab_size=cfg["type_vocab_size"],
        pad_token_id=cfg["pad_token_id"],
        layer_norm_eps=cfg["layer_norm_eps"],
    ).eval()
    head = MLMHead.for_encoder(enc)
    container = nn.ModuleDict({"text": enc, "text_mlm_head": head})
    mapper = KeyMapper(
        [
            *encoder_key_rules("text_encoder.roberta.", "text."),
            *mlm_head_key_rules("roberta", "text_encoder.lm_head.", "text_mlm_head."),
        ],
        drop=[
            *encoder_drop_patterns("text_encoder.roberta."),
            r"^text_encoder\.lm_head\.decoder\.bias$",
            r"^text_encoder\.lm_cap_head\.",
            r"^(?!text_encoder\.)",
        ],
    )
    report = load_into(container, state, mapper=mapper)
    assert report.ok
    with torch.no_grad():
        text = enc(inputs["text_ids"], inputs["text_atts"])
        masked = enc(inputs["masked_text_ids"], inputs["text_atts"])
        logits = head(masked, inputs["masked_pos"])
    torch.testing.assert_close(text, outputs["text_embeds"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked, outputs["text_embeds_masked"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, outputs["text_mlm_logits"], atol=1e-5, rtol=1e-4)
    loss = F.cross_entropy(logits.flatten(0, 1), inputs["masked_ids"].flatten())
    torch.testing.assert_close(loss, outputs["loss_text_mlm"], atol=1e-5, rtol=0)
