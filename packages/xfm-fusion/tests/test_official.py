"""Official pretraining checkpoint import/export (``xfm check-official``, which reproduces the
golden outputs, lives in xfm-tasks: ``packages/xfm-tasks/tests/test_check_official.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xfm.core.checkpoint import CheckpointError, CheckpointMismatchError
from xfm.fusion.model import XFM
from xfm.fusion.official import (
    UNUSED_OFFICIAL,
    from_official,
    infer_official_config,
    to_official,
    xfm_config_from_golden,
)

KEYS = Path(__file__).parent / "data" / "golden" / "keys"


def _model(golden_state, golden_config):
    return from_official(golden_state, xfm_config_from_golden(golden_config)).eval()


# ------------------------------------------------------------------- round trip
def _official_random(cfg: dict) -> dict[str, torch.Tensor]:
    """A random state dict in the official layout for ``cfg`` (via a fresh model's export)."""
    torch.manual_seed(0)
    model = XFM(xfm_config_from_golden(cfg))
    for p in model.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    return to_official(model)


def test_round_trip_is_bit_exact(golden_state, golden_config):
    model = _model(golden_state, golden_config)
    back = to_official(model)
    assert set(back) == set(golden_state)
    for key, tensor in golden_state.items():
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key], tensor), key
    # twice: the export of a re-import is the same again
    again = to_official(from_official(back, xfm_config_from_golden(golden_config)))
    assert all(torch.equal(again[k], back[k]) for k in back)


def test_tied_tensors_are_one_parameter(golden_state, golden_config):
    model = _model(golden_state, golden_config)
    assert model.text_mlm_head.decoder.weight is model.text_encoder.embeddings.word.weight
    exported = to_official(model)
    assert (
        exported["fusion_encoder.lm_head.decoder.weight"]
        is exported["fusion_encoder.roberta.embeddings.word_embeddings.weight"]
    )


def test_unused_tensors_are_kept_aside(golden_state, golden_config):
    model = _model(golden_state, golden_config)
    import re

    unused = {k for k in golden_state if any(re.search(p, k) for p in UNUSED_OFFICIAL)}
    assert unused and set(model.official_extras) == unused
    assert not any(k in model.state_dict() for k in unused)


def _key_list(name: str) -> dict[str, tuple[list[int], str]]:
    out = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (json.loads(shape), dtype)
    return out


def test_meta_export_matches_official_base_key_list():
    from xfm.fusion.model import XFMConfig

    config = XFMConfig(
        text={
            "name": "roberta",
            "vocab_size": 50265,
            "max_positions": 514,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
        },
        vision={"name": "beit_v2", "image_size": 224},
        fusion={"name": "cross_attention", "layers": 12},
        embed_dim=256,
    )
    with torch.device("meta"):
        model = XFM(config)
    exported = to_official(model)
    want = _key_list("pretrain")
    got = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in exported.items()}
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad


def test_infer_config_from_checkpoint(golden_state, golden_config):
    cfg = infer_official_config(golden_state, text_heads=4, fusion_heads=4)
    model = from_official(golden_state, cfg)
    ref = _model(golden_state, golden_config)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True)
    )


def test_import_at_another_resolution_resizes_tables(golden_state, golden_config):
    cfg = xfm_config_from_golden(golden_config)
    cfg.vision = {**cfg.vision, "image_size": 48}  # 6x6 grid instead of 4x4
    model = from_official(golden_state, cfg)
    table = model.vision_encoder.blocks[0].rel_pos.table
    assert table.shape[0] == (2 * 6 - 1) ** 2 + 3
    out = model.eval().encode_image(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, 1 + 36, 48)
    exported = to_official(model)
    assert exported["vision_encoder.blocks.0.attn.relative_position_index"].shape == (37, 37)


# ------------------------------------------------------------------------- bad input
def test_missing_and_misshaped_keys_give_grouped_report(golden_state, golden_config):
    state = dict(golden_state)
    del state["itm_head.0.weight"]
    state["vision_proj.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError) as err:
        from_official(state, xfm_config_from_golden(golden_config))
    msg = str(err.value)
    assert "itm_head.0.weight" in msg and "vision_proj.bias" in msg


def test_other_model_family_is_rejected():
    bert = {
        "bert.embeddings.word_embeddings.weight": torch.zeros(10, 4),
        "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(4, 4),
        "cls.predictions.bias": torch.zeros(10),
    }
    with pytest.raises(
        CheckpointError, match=r"not an official X-FM checkpoint.*\['bert', 'cls'\]"
    ):
        from_official(bert)


def test_config_mismatch_names_the_dimension(golden_state, golden_config):
    cfg = xfm_config_from_golden(golden_config)
    cfg.text = {**cfg.text, "width": 64, "heads": 4}
    with pytest.raises(CheckpointError, match=r"text width: checkpoint 48 .* config 64"):
        from_official(golden_state, cfg)


def test_unknown_encoder_name(golden_state, golden_config):
    from xfm.core.registry import UnknownComponentError

    cfg = xfm_config_from_golden(golden_config)
    cfg.text = {**cfg.text, "name": "robbberta"}
    with pytest.raises(UnknownComponentError, match="roberta"):
        from_official(golden_state, cfg)


def test_tied_tensors_that_differ_are_rejected(golden_state, golden_config):
    state = dict(golden_state)
    state["fusion_encoder.lm_head.decoder.bias"] = state["fusion_encoder.lm_head.bias"] + 1
    with pytest.raises(CheckpointError, match="tied"):
        from_official(state, xfm_config_from_golden(golden_config))


def test_torch_pickle_under_model_key(golden_state, golden_config, tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": golden_state, "epoch": 3}, path)
    model = from_official(path, xfm_config_from_golden(golden_config))
    ref = _model(golden_state, golden_config)
    assert torch.equal(model.temp, ref.temp)
