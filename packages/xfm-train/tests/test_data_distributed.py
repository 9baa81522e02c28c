"""Under ``torchrun --nproc_per_node 2`` (gloo) the ranks read disjoint samples covering the epoch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SCRIPT = Path(__file__).parent / "data_scripts" / "run_loader.py"


@pytest.mark.distributed
def test_ranks_see_disjoint_samples_covering_the_epoch(synth_dir: Path, tmp_path: Path):
    # 48 images, 2 ranks x batch 4 = 8 per step: 6 steps are exactly one epoch.
    cfg = {
        "sources": {"image": {"url": str(synth_dir / "mds/image/train"), "batch_size": 4}},
        "seed": 5,
        "num_workers": 0,
        "steps": 6,
    }
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "out-RANK.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(SCRIPT),
            str(cfg_path),
            str(out),
        ],
        check=True,
        timeout=120,
    )
    r0 = json.loads((tmp_path / "out-0.json").read_text())["keys"]["image"]
    r1 = json.loads((tmp_path / "out-1.json").read_text())["keys"]["image"]
    assert len(r0) == len(r1) == 24
    assert not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(f"train-{i:06d}" for i in range(48))
