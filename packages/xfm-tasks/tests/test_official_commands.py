"""``xfm import-official`` / ``xfm export-official`` as a user runs them (subprocess), on the
golden sets: official -> ours -> official is bit-exact for pretraining and every task family,
ours -> official -> ours too, and mistakes end in one ``error:`` line with exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

PACKAGES = Path(__file__).resolve().parents[2]
GOLDEN_TASKS = PACKAGES / "xfm-tasks" / "tests" / "data" / "golden_tasks"
SETS = {
    "pretrain": PACKAGES / "xfm-fusion" / "tests" / "data" / "golden",
    **{name: GOLDEN_TASKS / name for name in ("retrieval", "nlvr", "grounding", "vqa")},
    "glue": GOLDEN_TASKS / "classification_glue",
    "imagenet": GOLDEN_TASKS / "classification_imagenet",
}


def xfm(*args: str) -> subprocess.CompletedProcess[str]:
    run = [sys.executable, "-m", "xfm.core.cli", *args]
    return subprocess.run(run, capture_output=True, text=True, timeout=600)


def _assert_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(set(want) ^ set(got)) == []
    bad = [k for k, w in want.items() if got[k].dtype != w.dtype or not torch.equal(got[k], w)]
    assert bad == []


@pytest.mark.parametrize("name", sorted(SETS))
def test_official_to_ours_to_official_is_bit_exact(name: str, tmp_path: Path) -> None:
    golden = SETS[name]
    ours = tmp_path / "ours.safetensors"
    done = xfm(
        "import-official",
        str(golden / "model.safetensors"),
        "--out",
        str(ours),
        "--config",
        str(golden / "config.json"),
    )
    assert done.returncode == 0, done.stderr
    with safe_open(str(ours), "pt") as f:
        meta = json.loads(f.metadata()["xfm_model_config"])
    assert meta.get("task", "pretrain") in (name, "pretrain")
    # a run folder holding that file exports too; .pth = {"model": state}, weights_only
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ours, run / "model.safetensors")
    back = tmp_path / "official.pth"
    done = xfm("export-official", str(run), "--out", str(back), "--task", name)
    assert done.returncode == 0, done.stderr
    original = load_file(str(golden / "model.safetensors"))
    _assert_exact(torch.load(back, weights_only=True)["model"], original)


@pytest.mark.parametrize("name", ["retrieval", "vqa", "imagenet"])
def test_ours_to_official_to_ours_is_bit_exact(name: str, tmp_path: Path) -> None:
    golden = SETS[name]
    first = tmp_path / "first.safetensors"
    assert (
        xfm(
            "import-official",
            str(golden / "model.safetensors"),
            "--out",
            str(first),
            "--config",
            str(golden),
        ).returncode
        == 0
    )
    official = tmp_path / "official.safetensors"
    assert xfm("export-official", str(first), "--out", str(official)).returncode == 0
    second = tmp_path / "second.safetensors"
    done = xfm(
        "import-official",
        str(official),
        "--out",
        str(second),
        "--task",
        name,
        "--config",
        str(golden),
    )
    assert done.returncode == 0, done.stderr
    _assert_exact(load_file(str(second)), load_file(str(first)))


def test_dimensions_read_off_the_shapes(tmp_path: Path) -> None:
    """Without --config the pretraining / retrieval / NLVR2 / grounding layouts infer the
    model from the shapes; the others ask for --config."""
    out = tmp_path / "r.safetensors"
    done = xfm("import-official", str(SETS["retrieval"] / "model.safetensors"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    done = xfm(
        "import-official",
        str(SETS["glue"] / "model.safetensors"),
        "--out",
        str(tmp_path / "g.safetensors"),
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "--config" in done.stderr


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_family_mismatch_names_what_was_found(tmp_path: Path) -> None:
    out = str(tmp_path / "x.safetensors")
    line = _one_error(
        xfm(
            "import-official",
            str(SETS["vqa"] / "model.safetensors"),
            "--out",
            out,
            "--task",
            "retrieval",
            "--config",
            str(SETS["vqa"]),
        )
    )
    assert "official vqa checkpoint" in line and "not retrieval" in line
    line = _one_error(
        xfm(
            "import-official",
            str(SETS["pretrain"] / "model.safetensors"),
            "--out",
            out,
            "--task",
            "nlvr",
        )
    )
    assert "official pretrain checkpoint" in line and "not nlvr" in line
    assert (
        xfm(
            "import-official",
            str(SETS["nlvr"] / "model.safetensors"),
            "--out",
            out,
            "--config",
            str(SETS["nlvr"]),
        ).returncode
        == 0
    )
    line = _one_error(
        xfm("export-official", out, "--out", str(tmp_path / "o.pth"), "--task", "grounding")
    )
    assert "holds a nlvr model" in line and "grounding" in line


def test_refuses_to_overwrite_and_bad_inputs(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"")
    line = _one_error(
        xfm("import-official", str(SETS["nlvr"] / "model.safetensors"), "--out", str(out))
    )
    assert "--overwrite" in line
    _one_error(xfm("export-official", str(SETS["nlvr"]), "--out", str(tmp_path / "o.pth")))
    _one_error(xfm("export-official", str(tmp_path / "nothing"), "--out", str(tmp_path / "o.pt")))


def test_pretraining_run_folder_exports_and_imports_back(tmp_path: Path) -> None:
    """A pretraining run folder (``checkpoints/model.safetensors`` with the model spec in its
    metadata, as ``xfm pretrain`` writes it) -> official .pth -> ours: the same weights."""
    from xfm.core.checkpoint import save_state_dict
    from xfm.core.config import to_dict
    from xfm.fusion.model import XFM
    from xfm.fusion.official import xfm_config_from_golden

    golden = json.loads((SETS["pretrain"] / "config.json").read_text())
    torch.manual_seed(0)
    model = XFM(xfm_config_from_golden(golden))
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    spec = to_dict(model.config)
    save_state_dict(
        weights,
        str(run / "checkpoints" / "model.safetensors"),
        metadata={"xfm_model_config": json.dumps(spec)},
    )
    official = tmp_path / "xfm_pretrain.pth"
    done = xfm("export-official", str(run), "--out", str(official))
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back.safetensors"
    done = xfm(
        "import-official", str(official), "--out", str(back), "--config", str(SETS["pretrain"])
    )
    assert done.returncode == 0, done.stderr
    again = {k: v for k, v in load_file(str(back)).items() if not k.startswith("official_")}
    _assert_exact(again, weights)
