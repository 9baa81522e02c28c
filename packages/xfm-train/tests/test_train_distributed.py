"""``torchrun --nproc_per_node 2`` (gloo, CPU): ITC all-gather, a full pretraining run, and
elastic resume (2 ranks -> 1 process and back)."""

from __future__ import annotations

import json
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


def held_out_images(synth: Path) -> int:
    """Distinct images of the held-out split, as retrieval counts them (scenes that every
    caption describes alike share an ``image_id``)."""
    items = json.loads((synth / "annotations" / "test.json").read_text())
    return len({item["image_id"] for item in items})


def _pretrain_config(s: Path, run_dir: Path, mode: str, steps: int = 3, every: int = 0) -> dict:
    return {
        "distributed": mode,
        "run_dir": str(run_dir),
        "seed": 1,
        "steps": steps,
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
        "checkpoint": {"every": every},
        "eval": {"batch_size": 8},
        "log": {"progress": False, "tensorboard": False, "plot": False},
    }


def _pretrain(cfg: dict, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cfg_{len(list(folder.glob('cfg_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["-m", "xfm.core.cli", "pretrain", "--config", str(path), "--json", *extra]
    proc = _torchrun(args, 400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(run_dir: Path) -> dict[int, list[float]]:
    from xfm.train.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.csv") if "loss" in r]  # not eval rows
    assert rows, (run_dir / "metrics.csv").read_text()
    keys = [k for k in rows[0] if k == "loss" or ("/" in k and not k.startswith("eval/"))]
    return {int(r["step"]): [r[k] for k in keys] for r in rows}


@pytest.fixture(scope="module")
def ddp_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One DDP pretraining run (3 steps), shared by the tests below."""
    folder = tmp_path_factory.mktemp("ddp")
    before = _shm()
    proc = _pretrain(_pretrain_config(synth_dir, folder / "run", "ddp", every=2), folder)
    return folder / "run", proc, _shm() - before


@pytest.mark.distributed
def test_torchrun_pretraining_on_streaming_data(ddp_run, synth_dir: Path) -> None:
    """Two ranks train on disjoint streaming shards with DDP, checkpoint (rank 0 writes each
    once) and exit cleanly (no stale shared memory left)."""
    run_dir, proc, stale = ddp_run
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == [
        "step_00000002.pt",
        "step_00000003.pt",
    ]
    state = torch.load(ckpts / "step_00000003.pt", weights_only=True)
    assert len(state["rng"]) == 2  # one RNG state per rank
    assert state["loader"]["sources"]["image_text"]["world_size"] == 2
    images = held_out_images(synth_dir)
    assert f"zero-shot retrieval on {images} held-out images" in proc.stdout
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 prints
    assert not stale, f"stale shared memory left: {sorted(stale)}"


@pytest.mark.distributed
def test_fsdp_trains_like_ddp_and_resumes_exactly(ddp_run, synth_dir: Path, tmp_path: Path) -> None:
    """``distributed: fsdp`` (fully_shard, gloo, CPU): the same losses as DDP step by step (same
    data, seeds and math; only where parameters live differs), full-state checkpoints equal to
    DDP's, the safetensors export, and an exact resume from step 2."""
    from safetensors.torch import load_file

    ddp_dir, _, _ = ddp_run
    run_dir = tmp_path / "run"
    proc = _pretrain(_pretrain_config(synth_dir, run_dir, "fsdp", every=2), tmp_path)
    images = held_out_images(synth_dir)
    assert f"zero-shot retrieval on {images} held-out images" in proc.stdout  # unshards
    fsdp_losses, ddp_losses = _losses(run_dir), _losses(ddp_dir)
    assert sorted(fsdp_losses) == sorted(ddp_losses) == [1, 2, 3]
    for step in (1, 2, 3):
        torch.testing.assert_close(fsdp_losses[step], ddp_losses[step], atol=2e-5, rtol=2e-5)

    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == [
        "step_00000002.pt",
        "step_00000003.pt",
    ]
    state = torch.load(ckpts / "step_00000003.pt", weights_only=True)
    ddp_state = torch.load(ddp_dir / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert set(state["model"]) == set(ddp_state["model"])
    for name, value in ddp_state["model"].items():  # full tensors, our names
        torch.testing.assert_close(state["model"][name], value, atol=1e-5, rtol=1e-4)
    exported = load_file(ckpts / "model.safetensors")
    assert set(exported) <= set(state["model"]) and "temp" in exported

    # kill-free resume from step 2 on two ranks: step 3 is bit-identical to the uninterrupted
    # run (model, optimizer, every rank's RNG, and the data position all restored)
    resumed = tmp_path / "resumed"
    step2 = ckpts / "step_00000002.pt"
    cfg = _pretrain_config(synth_dir, resumed, "fsdp", every=2)
    proc = _pretrain(cfg, tmp_path / "cfg_resume", "--resume", str(step2))
    assert f"resumed from {step2}" in proc.stdout
    assert _losses(resumed) == {3: fsdp_losses[3]}


# ------------------------------------------------------------------------ elastic resume


def _elastic_config(s: Path, run_dir: Path, steps: int) -> dict:
    """A pretraining run on the 96 image-text pairs alone (4 per rank and step)."""
    cfg = _pretrain_config(s, run_dir, "auto", steps=steps)
    cfg["data"]["sources"] = {"image_text": cfg["data"]["sources"]["image_text"]}
    del cfg["data"]["eval_url"]
    cfg["data"]["loader"] = {"num_workers": 0}
    cfg["eval"]["at_end"] = False
    return cfg


def _pretrain_keys(ranks: int, cfg_path: Path, out: Path, resume: str, until: str) -> None:
    """``train_scripts/pretrain_keys.py`` alone (``ranks == 1``) or under torchrun."""
    script = [str(SCRIPTS / "pretrain_keys.py"), str(cfg_path), str(out), resume, until]
    if ranks == 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, *script]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    else:
        proc = _torchrun(script, 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _epoch_keys(out: Path) -> list[str]:
    """The ``image_text`` sample ids of epoch 0 read by every rank of both runs."""
    keys = []
    for path in sorted(out.parent.glob(f"{out.name}-*.txt")):
        for line in path.read_text().splitlines():
            epoch, key = line.split(" ", 1)
            if epoch == "0":
                keys.append(key)
    return keys


@pytest.mark.distributed
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_elastic_resume_reads_every_sample_of_the_epoch_once(
    synth_dir: Path, tmp_path: Path, before: int, after: int
) -> None:
    """Checkpointed mid-epoch on ``before`` ranks, resumed on ``after``: the two runs together
    read each training pair of the epoch exactly once (streaming's canonical-node order)."""
    from xfm.train.data import LoaderConfig, SourceConfig, SourceLoader

    train = synth_dir / "mds" / "image_text" / "train"
    raw = SourceLoader("image_text", SourceConfig(str(train), 96, shuffle=False), LoaderConfig())
    expected = sorted(str(s["id"]) for s in raw.next_batch())
    raw.release()
    assert len(expected) == len(set(expected)) == 96

    cut = 24  # samples read before the checkpoint: 3 steps on 2 ranks, 6 on 1
    steps = cut // (4 * before) + (96 - cut) // (4 * after)
    run_dir, out = tmp_path / "run", tmp_path / "keys"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_elastic_config(synth_dir, run_dir, steps)))
    _pretrain_keys(before, cfg_path, out, "-", str(cut // (4 * before)))
    ckpt = run_dir / "checkpoints" / f"step_{cut // (4 * before):08d}.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["loader"]["sources"]["image_text"]["sample_in_epoch"] == cut
    assert state["loader"]["sources"]["image_text"]["num_canonical_nodes"] == 1
    first = _epoch_keys(out)
    assert len(first) == cut

    _pretrain_keys(after, cfg_path, out, str(ckpt), "-")
    keys = _epoch_keys(out)
    assert len(keys) == 96, f"{len(keys)} samples read in the epoch, expected 96"
    assert sorted(keys) == expected  # none twice, none missing
