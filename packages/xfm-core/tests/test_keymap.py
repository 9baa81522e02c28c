"""KeyMapper rules, their inversion, and loading with readable mismatch reports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from xfm.core.checkpoint import (
    CheckpointMismatchError,
    Drop,
    KeyMapper,
    KeyMappingError,
    Merge,
    NotInvertibleError,
    Rename,
    Split,
    Transform,
    compare_state,
    group_keys,
    invert_rename,
    load_into,
    load_state_dict,
    save_state_dict,
)

D, LAYERS = 4, 12


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({n: nn.Linear(D, D) for n in ("q", "k", "v", "o")})
        self.norm = nn.LayerNorm(D)


class Tiny(nn.Module):
    """Our naming: ``embed``, ``layers.N.attn.{q,k,v,o}``, ``layers.N.norm``, ``head``."""

    def __init__(self, layers: int = LAYERS, vocab: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, D)
        self.layers = nn.ModuleList([Block() for _ in range(layers)])
        self.head = nn.Linear(D, 3)


def _hf_state(layers: int = LAYERS, vocab: int = 10) -> dict[str, torch.Tensor]:
    """A foreign (BERT-like) layout of the same weights, with extras to drop."""
    g = torch.Generator().manual_seed(0)
    sd = {"bert.embeddings.word_embeddings.weight": torch.randn(vocab, D, generator=g)}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for theirs in ("query", "key", "value"):
            sd[p + f"attention.self.{theirs}.weight"] = torch.randn(D, D, generator=g)
            sd[p + f"attention.self.{theirs}.bias"] = torch.randn(D, generator=g)
        sd[p + "attention.output.dense.weight"] = torch.randn(D, D, generator=g)
        sd[p + "attention.output.dense.bias"] = torch.randn(D, generator=g)
        sd[p + "attention.output.LayerNorm.weight"] = torch.randn(D, generator=g)
        sd[p + "attention.output.LayerNorm.bias"] = torch.randn(D, generator=g)
    sd["bert.embeddings.position_ids"] = torch.arange(8)
    sd["cls.head.weight"] = torch.randn(3, D, generator=g)
    sd["cls.head.bias"] = torch.randn(3, generator=g)
    return sd


def _hf_mapper(*, bijective: bool = False) -> KeyMapper:
    layer = r"^encoder\.layer\.(\d+)\."
    # strip_prefix is inverted by adding the prefix to every key; `cls.*` never had it, so a
    # mapper meant for export states the inverse of the strip explicitly
    strip = [Rename(r"^bert\.", "", inverse=(r"^(?!cls\.)", "bert."))] if bijective else []
    return KeyMapper(
        [
            *strip,
            Rename(r"^embeddings\.word_embeddings\.", "embed."),
            Rename(layer + r"attention\.self\.query\.", r"layers.\1.attn.q."),
            Rename(layer + r"attention\.self\.key\.", r"layers.\1.attn.k."),
            Rename(layer + r"attention\.self\.value\.", r"layers.\1.attn.v."),
            Rename(layer + r"attention\.output\.dense\.", r"layers.\1.attn.o."),
            Rename(layer + r"attention\.output\.LayerNorm\.", r"layers.\1.norm."),
            Rename(r"^cls\.head\.", "head."),
        ],
        strip_prefix=() if bijective else "bert.",
        drop=[r"\.position_ids$"],
        name="hf-bert",
    )


# --------------------------------------------------------------------------- rules


def test_rename_strip_and_drop_give_our_names() -> None:
    src = _hf_state()
    mapped = _hf_mapper().apply(src)
    model_keys = set(Tiny().state_dict())
    assert set(mapped.state) == model_keys
    assert mapped.dropped == ["bert.embeddings.position_ids"]
    assert mapped.unmapped == []
    # the tensors are the very same objects, under the new names
    assert (
        mapped.state["layers.7.attn.k.bias"] is src["bert.encoder.layer.7.attention.self.key.bias"]
    )
    assert mapped.origins["layers.3.norm.weight"] == (
        "bert.encoder.layer.3.attention.output.LayerNorm.weight",
    )


def test_unmapped_keys_are_reported_and_optionally_left_out() -> None:
    src = {
        "bert.pooler.dense.weight": torch.ones(1),
        "bert.embeddings.word_embeddings.weight": torch.ones(1),
    }
    mapped = _hf_mapper().apply(src)
    assert mapped.unmapped == ["bert.pooler.dense.weight"]  # a stripped prefix alone is no mapping
    assert set(mapped.state) == {"pooler.dense.weight", "embed.weight"}
    strict = KeyMapper(_hf_mapper().rules, passthrough=False)
    assert set(strict.apply(src).state) == {"embed.weight"}


def test_rules_apply_in_sequence_like_a_conversion_loop() -> None:
    src = {"module.a.x.w": torch.ones(1), "module.a.y.w": torch.ones(1)}
    mapper = KeyMapper(
        [Rename(r"^a\.", "b."), Rename(r"\.x\.", ".z."), Drop(r"^b\.y\.")],
        strip_prefix="module.",
    )
    mapped = mapper.apply(src)
    assert list(mapped.state) == ["b.z.w"]
    assert mapped.dropped == ["module.a.y.w"]


def test_split_fused_qkv_matches_slicing() -> None:
    fused_w, fused_b = torch.randn(3 * D, D), torch.randn(3 * D)
    src = {"blocks.0.attn.qkv.weight": fused_w, "blocks.0.attn.qkv.bias": fused_b}
    mapper = KeyMapper(
        [
            Split(
                r"^blocks\.(\d+)\.attn\.qkv\.",
                [r"layers.\1.attn.q.", r"layers.\1.attn.k.", r"layers.\1.attn.v."],
                fn=lambda t: t.chunk(3, dim=0),
            )
        ]
    )
    out = mapper.apply(src).state
    for i, name in enumerate("qkv"):
        assert torch.equal(out[f"layers.0.attn.{name}.weight"], fused_w[i * D : (i + 1) * D])
        assert torch.equal(out[f"layers.0.attn.{name}.bias"], fused_b[i * D : (i + 1) * D])
    bad = KeyMapper([Split(r"qkv", ["q", "k", "v"], fn=lambda t: t.chunk(2))])
    with pytest.raises(KeyMappingError, match="must return 3 tensors"):
        bad.apply({"qkv": torch.randn(4)})


def test_split_copies_a_shared_table_into_every_block() -> None:
    table = torch.randn(15, 2)
    src = {"rel_pos_bias.relative_position_bias_table": table}
    mapper = KeyMapper(
        [
            Split(
                r"^rel_pos_bias\.relative_position_bias_table$",
                [f"blocks.{i}.attn.relative_position_bias_table" for i in range(3)],
            )
        ]
    )
    out = mapper.apply(src).state
    assert sorted(out) == [f"blocks.{i}.attn.relative_position_bias_table" for i in range(3)]
    assert all(torch.equal(t, table) for t in out.values())
    # inverse: the copies are merged back into one table (they must be equal)
    back = mapper.inverse().apply(out)
    assert list(back.state) == ["rel_pos_bias.relative_position_bias_table"]
    assert torch.equal(back.state["rel_pos_bias.relative_position_bias_table"], table)
    out["blocks.1.attn.relative_position_bias_table"] = torch.zeros(15, 2)
    with pytest.raises(KeyMappingError, match="differ"):
        mapper.inverse().apply(out)


def test_merge_concatenates_parts_and_reports_incomplete_groups() -> None:
    q, k, v = torch.randn(D), torch.randn(D), torch.randn(D)
    src = {"l.0.q_bias": q, "l.0.k_bias": k, "l.0.v_bias": v, "other": torch.ones(1)}
    mapper = KeyMapper(
        [
            Merge(
                [r"^l\.(\d+)\.q_bias$", r"^l\.(\d+)\.k_bias$", r"^l\.(\d+)\.v_bias$"],
                r"layers.\1.qkv.bias",
                fn=lambda a, b, c: torch.cat([a, b, c]),
            )
        ]
    )
    mapped = mapper.apply(src)
    assert list(mapped.state) == ["layers.0.qkv.bias", "other"]
    assert torch.equal(mapped.state["layers.0.qkv.bias"], torch.cat([q, k, v]))
    assert mapped.origins["layers.0.qkv.bias"] == ("l.0.q_bias", "l.0.k_bias", "l.0.v_bias")
    del src["l.0.k_bias"]
    with pytest.raises(KeyMappingError, match=r"cannot build 'layers\.0\.qkv\.bias'.*k_bias"):
        mapper.apply(src)


def test_two_keys_mapping_to_one_name_is_an_error() -> None:
    mapper = KeyMapper([Rename(r"^(a|b)\.", "c.")])
    with pytest.raises(KeyMappingError, match=r"\['a\.w'\] and \['b\.w'\] both map to 'c\.w'"):
        mapper.apply({"a.w": torch.ones(1), "b.w": torch.ones(1)})


def test_transform_changes_tensors_only() -> None:
    w = torch.randn(3, 5)
    mapper = KeyMapper([Transform(r"\.conv1d\.weight$", torch.t, inverse_fn=torch.t)])
    out = mapper.apply({"h.conv1d.weight": w, "h.bias": w[0]}).state
    assert torch.equal(out["h.conv1d.weight"], w.t())
    assert out["h.bias"] is not None and torch.equal(out["h.bias"], w[0])


def test_rules_must_be_rule_objects() -> None:
    with pytest.raises(TypeError, match="Rule objects"):
        KeyMapper([(r"^a", "b")])  # type: ignore[list-item]


# --------------------------------------------------------------------------- inversion


@pytest.mark.parametrize(
    ("pattern", "repl", "key"),
    [
        (r"^bert\.encoder\.layer\.(\d+)\.", r"layers.\1.", "bert.encoder.layer.11.x.weight"),
        (r"^a\.(\d+)\.b\.(\d+)\.", r"x.\2.y.\1.", "a.3.b.7.w"),  # groups swapped
        (r"^(?P<i>\d+)\.gamma_(?P<j>[12])$", r"\g<i>.ls\g<j>.scale", "4.gamma_2"),
        (r"^module\.", "", "module.head.bias"),
        (r"\.LayerNorm\.", ".norm.", "x.LayerNorm.weight"),
        (r"^blocks\.(\d+)\.attn\.rel\\pos$", r"b.\1.rel", "blocks.2.attn.rel\\pos"),
    ],
)
def test_invert_rename_undoes_the_rename(pattern: str, repl: str, key: str) -> None:
    forward = re.sub(pattern, repl, key, count=1)
    assert forward != key
    inv_pattern, inv_repl = invert_rename(pattern, repl)
    assert re.sub(inv_pattern, inv_repl, forward, count=1) == key


@pytest.mark.parametrize(
    ("pattern", "repl"),
    [
        (r"^a\.\d+\.", "b."),  # \d outside a group: the digits are lost
        (r"^a\.(.*)\.(\d)", r"b.\1"),  # group 2 unused
        (r"^a\.(\d)", r"b.\1.\1"),  # group used twice
        (r"^a|b\.", "c."),  # alternation
        (r"^(?:a)\.", "c."),  # non-capturing group
        (r"^a(\d(\d))", r"\1"),  # nested groups
    ],
)
def test_invert_rename_refuses_lossy_patterns(pattern: str, repl: str) -> None:
    with pytest.raises(NotInvertibleError):
        invert_rename(pattern, repl)


def test_inverse_round_trip_is_exact() -> None:
    d = D
    src = _hf_state(layers=3)
    src.pop("bert.embeddings.position_ids")  # dropped keys cannot come back
    for i in range(3):  # make layer i fused for the split/merge rules
        p = f"bert.encoder.layer.{i}.attention.self."
        src[p + "qkv.weight"] = torch.cat(
            [src.pop(p + f"{n}.weight") for n in ("query", "key", "value")]
        )
    src["bert.pooler.conv1d.weight"] = torch.randn(d, 2 * d)
    mapper = _hf_mapper(bijective=True) + KeyMapper(
        [
            Split(
                r"^encoder\.layer\.(\d+)\.attention\.self\.qkv\.weight$",
                [
                    r"layers.\1.attn.q.weight",
                    r"layers.\1.attn.k.weight",
                    r"layers.\1.attn.v.weight",
                ],
                fn=lambda t: t.chunk(3),
                inverse_fn=lambda q, k, v: torch.cat([q, k, v]),
            ),
            Transform(r"conv1d\.weight$", lambda t: t.t().contiguous(), inverse_fn=lambda t: t.t()),
        ]
    )
    forward = mapper.apply(src)
    assert forward.unmapped == []
    assert _hf_mapper().inverse().apply(forward.state).state.keys() != src.keys()  # see above
    assert set(Tiny(layers=3).state_dict()) <= set(forward.state)
    back = mapper.inverse().apply(forward.state)
    assert list(back.state) != [] and set(back.state) == set(src)
    for k, v in src.items():
        assert torch.equal(back.state[k], v), k
    # and the inverse of the inverse is the forward mapping again
    again = mapper.inverse().inverse().apply(src).state
    assert set(again) == set(forward.state)
    assert all(torch.equal(again[k], forward.state[k]) for k in again)


def test_not_invertible_mapper_names_the_rule() -> None:
    with pytest.raises(NotInvertibleError, match=r"hf-x cannot be inverted.*\\d"):
        KeyMapper([Rename(r"^a\.\d+\.", "b.")], name="hf-x").inverse()
    with pytest.raises(NotInvertibleError, match="no inverse_fn"):
        KeyMapper([Transform(r"w$", torch.t)]).inverse()
    explicit = KeyMapper([Rename(r"^a\.\d+\.", "b.", inverse=(r"^b\.", "a.0."))])
    assert list(explicit.inverse().apply({"b.w": torch.ones(1)}).state) == ["a.0.w"]


_word = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


@given(
    prefix=st.lists(_word, min_size=1, max_size=3),
    new_prefix=st.lists(_word, min_size=1, max_size=3),
    middle=_word,
    new_middle=_word,
    index=st.integers(0, 99),
    leaf=_word,
)
def test_layer_rename_round_trip_property(
    prefix: list[str], new_prefix: list[str], middle: str, new_middle: str, index: int, leaf: str
) -> None:
    old = ".".join(prefix)
    new = ".".join(new_prefix)
    pattern = "^" + re.escape(old) + r"\.(\d+)\." + re.escape(middle) + r"\."
    repl = new + r".\1." + new_middle + "."
    mapper = KeyMapper([Rename(pattern, repl)])
    key = f"{old}.{index}.{middle}.{leaf}"
    t = torch.tensor([float(index)])
    forward = mapper.apply({key: t}).state
    assert list(forward) == [f"{new}.{index}.{new_middle}.{leaf}"]
    assert mapper.inverse().apply(forward).state == {key: t}


# --------------------------------------------------------------------------- reports and loading


def test_group_keys_collapses_layers_and_leaves() -> None:
    keys = [
        f"text.layers.{i}.attn.{n}.{w}" for i in range(12) for n in "qk" for w in ("weight", "bias")
    ]
    keys += ["text.embed.weight", "blocks.0.x", "blocks.2.x", "blocks.3.x", "blocks.7.x"]
    groups = group_keys(keys)
    patterns = {g.pattern: g.count for g in groups}
    assert patterns == {
        "text.layers.{0-11}.attn.q.{bias,weight}": 24,
        "text.layers.{0-11}.attn.k.{bias,weight}": 24,
        "text.embed.weight": 1,
        "blocks.{0,2-3,7}.x": 4,
    }
    assert sum(g.count for g in groups) == len(keys)
    assert sorted(k for g in groups for k in g.keys) == sorted(keys)


def test_strict_mismatch_error_groups_keys_and_names_checkpoint_and_model() -> None:
    model = Tiny()
    src = _hf_state()
    for i in range(LAYERS):  # a mapper that forgot the value projection
        src[f"bert.encoder.layer.{i}.attention.self.value_proj.weight"] = src.pop(
            f"bert.encoder.layer.{i}.attention.self.value.weight"
        )
    src["bert.embeddings.word_embeddings.weight"] = torch.randn(30, D)  # wrong vocab size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(model, src, mapper=_hf_mapper(), source="hf-bert-tiny.bin")
    msg = str(info.value)
    assert "hf-bert-tiny.bin" in msg
    assert "Tiny" in msg
    assert "missing from the checkpoint (12 keys)" in msg
    assert "layers.{0-11}.attn.v.weight" in msg
    assert "encoder.layer.{0-11}.attention.self.value_proj.weight" in msg
    assert (
        "embed.weight (from bert.embeddings.word_embeddings.weight): checkpoint [30, 4] vs model [10, 4]"
        in msg
    )
    assert "12 unexpected key(s) matched no mapping rule" in msg
    assert len(msg.splitlines()) < 20  # readable: grouped, not one line per key
    report = info.value.report
    assert sorted(report.missing) == sorted(f"layers.{i}.attn.v.weight" for i in range(LAYERS))
    assert report.shape_mismatches[0].checkpoint_shape == (30, D)
    assert report.shape_mismatches[0].model_shape == (10, D)
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_strict_loads_what_fits() -> None:
    model = Tiny()
    src = _hf_state()
    src["bert.embeddings.word_embeddings.weight"] = torch.randn(30, D)
    del src["bert.encoder.layer.0.attention.self.query.bias"]
    embed_before = model.embed.weight.detach().clone()
    q0_before = model.layers[0].attn.q.bias.detach().clone()
    report = load_into(model, src, mapper=_hf_mapper(), strict=False)
    assert not report.ok
    assert report.missing == ["layers.0.attn.q.bias"]
    assert [m.key for m in report.shape_mismatches] == ["embed.weight"]
    assert torch.equal(model.embed.weight, embed_before)
    assert torch.equal(model.layers[0].attn.q.bias, q0_before)
    assert torch.equal(
        model.layers[5].attn.k.weight, src["bert.encoder.layer.5.attention.self.key.weight"]
    )
    assert torch.equal(model.head.bias, src["cls.head.bias"])
    assert len(report.loaded) == len(model.state_dict()) - 2


def test_strict_load_from_file_round_trip(tmp_path: Path) -> None:
    src_model, dst_model = Tiny(), Tiny()
    save_state_dict(src_model.state_dict(), tmp_path / "tiny.safetensors")
    report = load_into(dst_model, tmp_path / "tiny.safetensors")
    assert report.ok and len(report.loaded) == len(src_model.state_dict())
    for k, v in src_model.state_dict().items():
        assert torch.equal(dst_model.state_dict()[k], v)


def test_prefix_hint_and_allowed_keys() -> None:
    model = Tiny(layers=2)
    src = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"strip_prefix='module\.'"):
        load_into(model, src)
    state = dict(model.state_dict())
    state.pop("head.bias")
    state["extra.buffer"] = torch.ones(1)
    report = load_into(model, state, allow_missing=r"^head\.bias$", allow_unexpected=[r"^extra\."])
    assert report.ok
    assert report.ignored_missing == ["head.bias"] and report.ignored_unexpected == ["extra.buffer"]


def test_dtypes_cast_within_a_kind_and_mismatch_across_kinds() -> None:
    model = Tiny(layers=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"] = torch.randn(3, D).half()
    report = load_into(model, state)
    assert [c.key for c in report.casts] == ["head.weight"]
    assert model.head.weight.dtype == torch.float32
    assert torch.equal(model.head.weight, state["head.weight"].float())
    state["head.bias"] = torch.tensor([1, 2, 3])
    with pytest.raises(
        CheckpointMismatchError,
        match=r"head\.bias: checkpoint torch\.int64 vs model torch\.float32",
    ):
        load_into(model, state)


def test_shape_check_on_meta_device_reads_no_data(tmp_path: Path) -> None:
    save_state_dict(Tiny(layers=2).state_dict(), tmp_path / "m.safetensors")
    with torch.device("meta"):
        wide = Tiny(layers=2, vocab=20)
    ckpt = load_state_dict(tmp_path / "m.safetensors", map_location="meta")
    report = compare_state(wide, ckpt)
    assert [(m.key, m.checkpoint_shape, m.model_shape) for m in report.shape_mismatches] == [
        ("embed.weight", (10, D), (20, D))
    ]
    assert not report.missing and not report.unexpected
    # a meta model can be materialised from the checkpoint with assign=True
    with torch.device("meta"):
        model = Tiny(layers=2)
    load_into(model, load_state_dict(tmp_path / "m.safetensors"), assign=True)
    assert model.embed.weight.device.type == "cpu"
    assert isinstance(model.embed.weight, nn.Parameter) and model.embed.weight.requires_grad
