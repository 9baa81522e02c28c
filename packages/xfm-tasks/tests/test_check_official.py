"""``xfm check-official`` on the pretraining golden directory (and one of other dimensions).

The golden directory is xfm-fusion's copy of ``../shared/golden``; the task directories are
covered by ``test_official_tasks.py`` / ``test_vqa_classification_official.py``.
"""

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
from xfm.fusion.model import XFM
from xfm.fusion.official import from_official, to_official, xfm_config_from_golden
from xfm.tasks.official.check import check_official
from xfm.tasks.official.pretrain import pretrain_outputs

GOLDEN = Path(__file__).resolve().parents[2] / "xfm-fusion" / "tests" / "data" / "golden"


@pytest.fixture(scope="module")
def golden_dir() -> Path:
    assert (GOLDEN / "config.json").is_file(), f"golden data missing at {GOLDEN}"
    return GOLDEN


@pytest.fixture(scope="module")
def golden_config(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "config.json").read_text())


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
    losses = {r.name for r in results if "loss" in r.name}
    assert losses and losses <= ok  # the losses are computed too (xfm-train's objectives)


def test_check_official_cli(golden_dir):
    run = [sys.executable, "-m", "xfm.core.cli", "check-official", str(golden_dir)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vision_embeds" in done.stdout and " 0 failed" in done.stdout


def test_check_official_exit_codes(golden_dir, tmp_path, capsys):
    import argparse

    from xfm.tasks.official.check import CheckOfficialCommand

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
