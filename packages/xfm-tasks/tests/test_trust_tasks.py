"""The task commands never run code from a file they read: ``xfm eval --checkpoint``,
``xfm finetune ... init_from=`` and ``xfm finetune --resume PATH`` given a torch file or a
raw pickle whose unpickling would run ``touch MARKER`` end with one ``error:`` line, exit 2,
and no marker; so do ``xfm check-official`` (a golden folder whose ``model.safetensors`` is such
a file) and ``xfm import-official`` (an official ``.pth`` that is one). (The pretraining cases:
xfm-train's test_trust_checkpoints.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xfm.train.checkpointing import MANIFEST_FORMAT, TRAIN_STATE_FORMAT, manifest_url

XFM = Path(sys.executable).parent / "xfm"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_tasks" / "retrieval"
RETRIEVAL = Path(__file__).resolve().parents[3] / "configs" / "tasks" / "retrieval_synth.yaml"
MODEL = [
    "model.text.width=32",
    "model.text.layers=1",
    "model.text.heads=2",
    "model.text.ffn_dim=64",
    "model.vision.width=32",
    "model.vision.layers=1",
    "model.vision.heads=2",
    "model.fusion.layers=1",
    "model.fusion.heads=2",
    "model.fusion.ffn_dim=64",
]


class Payload:
    """Unpickling it runs ``touch MARKER`` (what an attacker's ``__reduce__`` would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(kind: str, marker: Path) -> bytes:
    state = {"format": TRAIN_STATE_FORMAT, "model": {"w": torch.zeros(2)}, "step": 2}
    state |= {"optimizer": Payload(str(marker)), "scheduler": {}, "rng": {}, "loader": {}}
    state["config"] = {}
    if kind == "pickle":
        return pickle.dumps(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        SynthConfig(seed=4, image_size=32, num_train=8, num_test=4, num_text=8, vocab_size=300),
        progress=False,
    )
    return out


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Loading it the unsafe way does run the payload (so the refusals below mean something)."""
    marker = tmp_path / "MARKER"
    torch.load(io.BytesIO(_evil("torch", marker)), weights_only=False)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch", "pickle"])
@pytest.mark.parametrize("case", ["eval-checkpoint", "finetune-init-from", "finetune-resume"])
def test_task_commands_refuse_malicious_files(
    synth: Path, tmp_path: Path, case: str, kind: str
) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    data = _evil(kind, marker)
    evil.write_bytes(data)
    manifest = {"format": MANIFEST_FORMAT, "checkpoint": evil.name, "step": 2, "size": len(data)}
    manifest["sha256"] = hashlib.sha256(data).hexdigest()  # a valid digest: refusing must not
    Path(manifest_url(str(evil))).write_text(json.dumps(manifest))  # depend on it
    task = ["--config", str(RETRIEVAL), "data.synth=null", f"data.root={synth}"]
    task += [f"data.tokenizer={synth}/tokenizer", f"data.train={synth}/tasks/retrieval_train.json"]
    task += [f"data.eval.test={synth}/tasks/retrieval_test.json", "data.image_size=32"]
    task += ["device=cpu", f"run_dir={tmp_path / 'ft'}", "train.steps=1", *MODEL]
    args = {
        "eval-checkpoint": ["eval", "retrieval", "--checkpoint", str(evil), *task],
        "finetune-init-from": ["finetune", "retrieval", *task, f"init_from={evil}"],
        "finetune-resume": ["finetune", "retrieval", *task, "--resume", str(evil)],
    }[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(XFM), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert any(w in errors[0] for w in ("refused", "not a torch", "pickle")), out
    assert not marker.exists(), f"code from the file ran: {out}"


@pytest.mark.parametrize("kind", ["torch", "pickle"])
@pytest.mark.parametrize("case", ["check-official", "import-official"])
def test_official_commands_refuse_malicious_files(tmp_path: Path, case: str, kind: str) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil(kind, marker)
    if case == "check-official":
        golden = tmp_path / "golden"
        golden.mkdir()
        for name in ("config.json", "inputs.safetensors", "outputs.safetensors"):
            (golden / name).write_bytes((GOLDEN / name).read_bytes())
        (golden / "model.safetensors").write_bytes(evil)
        args = ["check-official", str(golden)]
    else:
        (tmp_path / "official.pth").write_bytes(evil)
        args = ["import-official", str(tmp_path / "official.pth"), "--out", str(tmp_path / "o.st")]
        args += ["--task", "retrieval", "--config", str(GOLDEN / "config.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(XFM), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert not marker.exists(), f"code from the file ran: {out}"
