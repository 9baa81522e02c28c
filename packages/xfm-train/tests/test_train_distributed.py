"""``torchrun --nproc_per_node 2`` (gloo, CPU): ITC all-gather and a full pretraining run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from xfm.train.objectives import itc_loss

SCRIPTS = Path(__file__).parent / "train_scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.distributed
def test_itc_all_gather_equals_one_process_with_the_union_batch(tmp_path: Path) -> None:
    proc = _torchrun([str(SCRIPTS / "itc_gather.py"), str(tmp_path / "out-RANK.pt")], 180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = (torch.load(tmp_path / f"out-{r}.pt") for r in (0, 1))
    # one process, the union batch (same generator draws as the script)
    g = torch.Generator().manual_seed(0)
    fi = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1).requires_grad_(True)
    ft = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1).requires_grad_(True)
    fi.retain_grad()
    ft.retain_grad()
    loss = itc_loss(fi, ft, torch.tensor(0.1), torch.arange(7) // 2, gather=False)
    loss.backward()
    for r, part in ((r0, slice(0, 3)), (r1, slice(3, 7))):
        torch.testing.assert_close(r["loss"], loss.detach(), atol=1e-6, rtol=0)
        # the gradient reaches the local shard: exactly the union gradient of those rows
        torch.testing.assert_close(r["grad_i"], fi.grad[part], atol=1e-6, rtol=0)
        torch.testing.assert_close(r["grad_t"], ft.grad[part], atol=1e-6, rtol=0)


@pytest.mark.distributed
def test_torchrun_pretraining_on_streaming_data(synth_dir: Path, tmp_path: Path) -> None:
    """Two ranks train on disjoint streaming shards with DDP, checkpoint once and exit cleanly
    (no stale shared memory left)."""
    s = synth_dir
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "seed": 1,
        "steps": 3,
        "device": "cpu",
        "threads": 1,
        "model": {
            "embed_dim": 16,
            "text": {
                "name": "roberta",
                "width": 32,
                "layers": 1,
                "heads": 2,
                "ffn_dim": 64,
                "max_positions": 64,
                "type_vocab_size": 1,
            },
            "vision": {"name": "beit_v2", "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 2.0},
            "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64},
        },
        "data": {
            "tokenizer": f"{s}/tokenizer",
            "eval_url": f"{s}/mds/image_text/test",
            "process": {
                "image_size": 32,
                "patch_size": 8,
                "mim_min_block": 2,
                "max_text_len": 40,
                "max_caption_len": 24,
            },
            "loader": {"num_workers": 1},
            "sources": {
                "text": {"url": f"{s}/mds/text/train", "batch_size": 4},
                "image_text": {"url": f"{s}/mds/image_text/train", "batch_size": 4},
                "region": {"url": f"{s}/mds/region/train", "batch_size": 4},
            },
        },
        "optim": {"warmup_steps": 1},
        "checkpoint": {"every": 0},
        "eval": {"batch_size": 8},
        "log": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = _shm()
    proc = _torchrun(["-m", "xfm.core.cli", "pretrain", "--config", str(path), "--json"], 400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == ["step_00000003.pt"]
    state = torch.load(ckpts / "step_00000003.pt", weights_only=False)
    assert len(state["rng"]) == 2  # one RNG state per rank
    assert state["loader"]["sources"]["image_text"]["world_size"] == 2
    assert "zero-shot retrieval on 16 held-out images" in proc.stdout
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 prints
    assert not (_shm() - before), f"stale shared memory left: {sorted(_shm() - before)}"
