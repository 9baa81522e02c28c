"""Official checkpoint import/export and ``xfm check-official`` against the golden outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xfm.core.attention import runnable_backends
from xfm.core.checkpoint import CheckpointError, CheckpointMismatchError
from xfm.fusion.check_official import check_official, pretrain_outputs
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


# ------------------------------------------------------------------- parity with official
@pytest.mark.parametrize("backend", runnable_backends("cpu"))
def test_check_official_reproduces_every_model_output(golden_dir, backend):
    results = check_official(golden_dir, backend=backend)
    failed = [(r.name, r.max_abs_diff, r.reason) for r in results if r.status == "FAIL"]
    assert not failed, failed
    ok = {r.name for r in results if r.status == "ok"}
    # every non-loss output is compared; losses are either compared or skipped with a reason
    for name in (
        "vision_embeds",
        "vision_embeds_masked",
        "text_embeds",
        "text_embeds_masked",
        "image_feat",
        "text_feat",
        "sim_i2t",
        "itm_logits_all",
        "fusion_states_pos",
        "fusion_mlm_logits",
        "text_mlm_logits",
        "region_vision_embeds",
        "region_vision_embeds_fullatts",
        "bbox_pred",
    ):
        assert name in ok
    assert all(r.reason for r in results if r.status == "skipped")


def test_check_official_cli(golden_dir):
    run = [sys.executable, "-m", "xfm.core.cli", "check-official", str(golden_dir)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vision_embeds" in done.stdout and " 0 failed" in done.stdout


def test_check_official_exit_codes(golden_dir, tmp_path, capsys):
    import argparse

    from xfm.fusion.check_official import CheckOfficialCommand

    def run(directory: Path) -> int:
        args = argparse.Namespace(directory=str(directory), atol=1e-5, rtol=1e-4, backend="eager")
        return CheckOfficialCommand().run(args)

    bad = tmp_path / "bad"  # a tampered output must make it fail
    shutil.copytree(golden_dir, bad)
    out = load_file(str(bad / "outputs.safetensors"))
    out["sim_i2t"] = out["sim_i2t"] + 1e-3
    save_file(out, str(bad / "outputs.safetensors"))
    assert run(bad) == 1
    printed = capsys.readouterr().out
    assert any(line.startswith("FAIL") and "sim_i2t" in line for line in printed.splitlines())
    assert run(tmp_path) == 2  # not a golden directory
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")  # one line, on stderr
    assert "config.json" in captured.err


def test_unchecked_output_without_reason_fails(golden_dir, tmp_path):
    d = tmp_path / "extra"
    shutil.copytree(golden_dir, d)
    out = load_file(str(d / "outputs.safetensors"))
    out["something_new"] = torch.zeros(2)
    save_file(out, str(d / "outputs.safetensors"))
    results = {r.name: r for r in check_official(d)}
    assert results["something_new"].status == "FAIL"


def _random_golden_like(golden_dir: Path, tmp_path: Path, golden_config: dict) -> Path:
    """A golden-format directory with other dimensions (Dv != Dt, 48px, 3 layers ...).

    Its expected outputs are computed by a model built directly from the config (before the
    export to official names): the check must rebuild the same model from ``config.json`` alone
    and load it back through the official importer (Dv != Dt adds ``fusion_proj``). The numbers
    themselves are proven against the official code by the golden test above."""
    cfg = json.loads(json.dumps(golden_config))
    cfg["vision"].update(image_size=48, patch_size=8, width=40, layers=3, heads=5, mlp_hidden=80)
    cfg["text"].update(width=32, layers=1, heads=2, intermediate_size=64)
    cfg["fusion"].update(
        width=32, layers=3, heads=4, intermediate_size=48, cross_attention_layers=3
    )
    cfg["embed_dim"] = 16
    model = from_official(_official_random(cfg), xfm_config_from_golden(cfg)).eval()
    d = tmp_path / "other"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous().clone() for k, v in to_official(model).items()},
        str(d / "model.safetensors"),
    )
    g = torch.Generator().manual_seed(7)
    b, t, n = 3, 9, (48 // 8) ** 2
    ids = torch.randint(3, cfg["text"]["vocab_size"], (b, t), generator=g)
    ids[:, 0] = 0
    atts = torch.ones(b, t, dtype=torch.long)
    atts[1, 6:] = 0
    ids[1, 6:] = 1
    inputs = {
        "image": torch.randn(b, 3, 48, 48, generator=g),
        "text_ids": ids,
        "text_atts": atts,
        "image_mask": torch.rand(b, n, generator=g) < 0.4,
        "masked_text_ids": ids.clone(),
        "masked_pos": torch.tensor([[1, 2], [3, 0], [4, 5]]),
        "masked_ids": torch.tensor([[5, 6], [7, -100], [8, 9]]),
        "neg_image_idx": torch.tensor([1, 2, 0]),
        "neg_text_idx": torch.tensor([2, 0, 1]),
        "idx_to_group_img": torch.tensor([0, 0, 2]),
        "region_image_atts": (torch.rand(b, n + 1, generator=g) < 0.5).long(),
        "is_image": torch.tensor([0, 1, 0]),
        "target_bbox": torch.rand(b, 4, generator=g),
    }
    inputs["region_image_atts"][:, 0] = 1
    inputs["region_image_atts"][:, 1] = 1
    save_file(inputs, str(d / "inputs.safetensors"))
    with torch.no_grad():
        outputs = {k: v.contiguous() for k, v in pretrain_outputs(model, inputs).items()}
    save_file(outputs, str(d / "outputs.safetensors"))
    return d


def _official_random(cfg: dict) -> dict[str, torch.Tensor]:
    """A random state dict in the official layout for ``cfg`` (via a fresh model's export)."""
    torch.manual_seed(0)
    model = XFM(xfm_config_from_golden(cfg))
    for p in model.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    return to_official(model)


def test_check_official_other_dimensions(golden_dir, golden_config, tmp_path):
    d = _random_golden_like(golden_dir, tmp_path, golden_config)
    results = check_official(d)
    assert not [r.name for r in results if r.status == "FAIL"]
    assert sum(r.status == "ok" for r in results) >= 14


# ------------------------------------------------------------------------ round trips
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
