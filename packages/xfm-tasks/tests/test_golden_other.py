"""``xfm check-official`` on the other-dimension golden sets (``packages/xfm-tasks/tests/data/golden_other``).

The sets were computed by RUNNING the official X-FM code (``tools/golden/make_official_golden.py``)
with vision width 36 != text width 24, 4 vs 2 heads, a 5x5 patch grid, other depths and
vocabulary, so dimension mix-ups that the shared (all-equal-width) golden sets cannot reveal
fail here. A missing folder is a failure, not a skip. Each check is one subprocess
(``python -m xfm.core.cli check-official DIR``, a few seconds): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

GOLDEN_OTHER = Path(__file__).parent / "data" / "golden_other"
SETS = (
    "pretrain",
    "retrieval",
    "nlvr",
    "grounding",
    "vqa",
    "classification_glue",
    "classification_imagenet",
)


def _check_official(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "xfm.core.cli", "check-official", str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _set_dir(name: str) -> Path:
    directory = GOLDEN_OTHER / name
    if not (directory / "outputs.safetensors").is_file():
        pytest.fail(
            f"{directory} is missing: regenerate with "
            "`python tools/golden/make_official_golden.py --out packages/xfm-tasks/tests/data/golden_other`"
        )
    return directory


@pytest.mark.parametrize("name", SETS)
def test_set_has_other_dimensions(name: str) -> None:
    cfg = json.loads((_set_dir(name) / "config.json").read_text())
    assert cfg["vision"]["width"] != cfg["text"]["width"]
    assert cfg["vision"]["heads"] != cfg["text"]["heads"]
    assert cfg["vision"]["grid"] == [5, 5]
    assert cfg["has_fusion_proj"] is True
    assert cfg.get("task", "pretrain") == name


@pytest.mark.slow
@pytest.mark.parametrize("name", SETS)
def test_check_official_reproduces_golden_other(name: str) -> None:
    result = _check_official(_set_dir(name))
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    summary = result.stdout.strip().splitlines()[-1]
    assert " 0 failed, 0 skipped" in summary, report
    expected = load_file(str(_set_dir(name) / "outputs.safetensors"))
    assert summary.startswith(f"{len(expected)} passed"), report


@pytest.mark.slow
def test_check_official_fails_on_a_perturbed_output(tmp_path: Path) -> None:
    """The comparison can fail: one logit moved by 1e-3 (well above atol/rtol) is reported."""
    src = _set_dir("classification_glue")
    target = tmp_path / "classification_glue"
    shutil.copytree(src, target)
    outputs = load_file(str(target / "outputs.safetensors"))
    outputs["logits"] = outputs["logits"].clone()
    outputs["logits"][0, 0] += 1e-3
    save_file(outputs, str(target / "outputs.safetensors"))
    result = _check_official(target)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split()[1] for line in failed] == ["logits"]
    assert (
        torch.equal(load_file(str(src / "outputs.safetensors"))["logits"], outputs["logits"])
        is False
    )
