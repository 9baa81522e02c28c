"""The README's chained quick start, run as written (with fast settings appended) in a fresh
folder holding only the repository's ``configs/``: pretrain -> fine-tune retrieval initialised
from that pretraining -> eval -> search -> plot."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"

#: Appended to each command so that the chain runs in seconds (the README's own settings are
#: the real ones: 300 pretraining and 500 fine-tuning steps).
FAST = {
    "pretrain": [
        "steps=6",
        "data.synth.num_train=40",
        "data.synth.num_test=12",
        "data.synth.num_text=40",
        "eval.every=0",
        "checkpoint.every=0",
        "log.progress=false",
    ],
    "finetune": ["train.steps=4", "train.batch_size=8", "train.progress=false"],
}


def _commands() -> list[list[str]]:
    """The pretraining command of quick start (a), then every line of the chained block."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    first = next(b for b in blocks if "xfm pretrain --config configs/pretrain/tiny.yaml" in b)
    pretrain = first.strip().split("&&")[-1].strip()
    chain = next(b for b in blocks if "xfm finetune retrieval --config" in b)
    lines = [pretrain] + [ln.strip() for ln in chain.strip().splitlines() if ln.strip()]
    return [shlex.split(line) for line in lines]


def test_readme_lists_the_chain() -> None:
    names = [cmd[1] for cmd in _commands()]
    assert names == ["pretrain", "finetune", "eval", "search", "plot"]
    assert all(cmd[0] == ".venv/bin/xfm" for cmd in _commands())


@pytest.mark.slow
def test_readme_chain_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # what a fresh clone has
    xfm = shutil.which("xfm", path=str(Path(sys.executable).parent)) or "xfm"
    outputs = {}
    for cmd in _commands():
        argv = [xfm, *cmd[1:], *FAST.get(cmd[1], [])]
        if cmd[1] in ("finetune", "eval"):
            argv.append("--json")
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        outputs[cmd[1]] = proc.stdout
    # fine-tuning started from the pretraining: every tensor fitted, none trained from scratch
    assert "initialised from runs/tiny/checkpoints/model.safetensors" in outputs["finetune"]
    assert "0 missing" in outputs["finetune"] and "0 with a different shape" in outputs["finetune"]
    tuned = json.loads(outputs["finetune"].strip().splitlines()[-1])
    again = json.loads(outputs["eval"].strip().splitlines()[-1])
    for key, value in tuned["eval"].items():
        assert again[key] == pytest.approx(value, abs=1e-9), key
    hits = [ln for ln in outputs["search"].splitlines() if ln.strip()[:1].isdigit()]
    assert len(hits) == 10 and all("data/synth/images/test/" in h for h in hits)
    assert (tmp_path / "runs" / "retrieval_tiny" / "loss_curves.png").is_file()
