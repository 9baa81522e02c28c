"""Fine-tuning on the shared training engine: exact resume after SIGKILL, gradient
accumulation, bf16 autocast, and DDP under real ``torchrun`` (gloo, CPU) against a one-process
reference, for a fusion task (NLVR2) and GLUE."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from xfm.core.cli import main

SCRIPT = Path(__file__).parent / "scripts" / "dist_finetune.py"


def _model(dropout: float) -> dict:
    """A tiny fusion model; ``dropout`` for text, fusion and the vision drop path."""
    drop = {"dropout": dropout, "attn_dropout": dropout}
    return {
        "embed_dim": 16,
        "text": {
            "name": "roberta",
            "width": 32,
            "layers": 1,
            "heads": 2,
            "ffn_dim": 64,
            "max_positions": 40,
            "type_vocab_size": 1,
            **drop,
        },
        "vision": {
            "name": "beit_v2",
            "width": 32,
            "layers": 1,
            "heads": 2,
            "mlp_ratio": 2.0,
            "patch_size": 8,
            "drop_path_rate": dropout,
        },
        "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64, **drop},
    }


TEXT = {
    "name": "roberta",
    "width": 32,
    "layers": 1,
    "heads": 2,
    "ffn_dim": 64,
    "max_positions": 48,
    "type_vocab_size": 1,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xfm.tasks.glue import write_glue_synthetic
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        SynthConfig(seed=3, image_size=32, num_train=24, num_test=8, num_text=8, vocab_size=300),
        progress=False,
    )
    write_glue_synthetic(out / "glue", "sst2", num_train=64, num_dev=16, seed=0)
    return out


def _write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fusion_config(synth: Path, run_dir: Path, task: str, **train) -> dict:
    files = {"retrieval": "retrieval", "nlvr": "nlvr"}[task]
    return {
        "task": task,
        "run_dir": str(run_dir),
        "device": "cpu",
        "threads": 1,
        "seed": 5,
        "model": _model(0.1 if task == "retrieval" else 0.0),
        "options": {"k_test": 4, "itm_batch_size": 8} if task == "retrieval" else {},
        "data": {
            "synth": {"out": str(synth)},
            "train": f"{{synth}}/tasks/{files}_train.json",
            "eval": {"test": f"{{synth}}/tasks/{files}_test.json"},
            "image_size": 32,
        },
        "train": {"steps": 3, "batch_size": 4, "eval_batch_size": 8, "log_every": 1, **train},
        # eps 1e-6: parameters whose exact gradient is zero (attention key biases) get float
        # noise; AdamW's default eps 1e-8 turns that into lr-sized steps that differ between
        # DDP and one process
        "optim": {"lr": 1e-3, "warmup_steps": 1, "eps": 1e-6},
    }


def _glue_config(synth: Path, run_dir: Path, **train) -> dict:
    return {
        "task": "glue",
        "run_dir": str(run_dir),
        "device": "cpu",
        "threads": 1,
        "seed": 2,
        "model": {"text": TEXT},
        "options": {"glue_task": "sst2"},
        "data": {
            "synth": {"out": str(synth)},
            "train": str(synth / "glue" / "train.tsv"),
            "eval": {},  # (GLUE metrics need scikit-learn; the loop is what is tested)
            "max_tokens": 32,
        },
        "train": {"steps": 3, "batch_size": 4, "eval_batch_size": 16, "log_every": 1, **train},
        "optim": {
            "lr": 1e-3,
            "warmup_steps": 1,
            "eps": 1e-6,  # (see _fusion_config)
            "grad_clip": 0.0,
            "new_params": ["^cls_head\\."],
        },
    }


def _loss_rows(run_dir: Path) -> list[dict[str, float]]:
    from xfm.train.metrics import read_metrics

    rows = read_metrics(run_dir / "metrics.csv")
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows if "loss" in r]


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xfm.core.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# ------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_sigkill_then_resume_continues_bitwise(synth: Path, tmp_path: Path) -> None:
    """``xfm finetune`` killed with SIGKILL after a checkpoint and resumed with ``--resume``
    gives the loss sequence of the uninterrupted run, bit for bit (CPU fp32): weights,
    AdamW, schedule, the RNG streams (dropout, drop path, ITM hard negatives) and the position
    in the shuffled data (mid-epoch, across epochs) are all restored."""
    train = {"steps": 40, "checkpoint_every": 2, "keep": 0}
    ref_cfg = _write(tmp_path, "ref", _fusion_config(synth, tmp_path / "ref", "retrieval", **train))
    cfg = _write(tmp_path, "k", _fusion_config(synth, tmp_path / "killed", "retrieval", **train))
    ref = _cli(["finetune", "retrieval", "--config", str(ref_cfg)])
    killed = _cli(["finetune", "retrieval", "--config", str(cfg)])
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if latest.is_file() and latest.read_text() >= "step_00000004.pt":
            break
        time.sleep(0.02)
    assert killed.poll() is None, f"run ended before it could be killed:\n{killed.stdout.read()}"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    at = int(latest.read_text()[5:13])
    assert 4 <= at < 40
    resumed = _cli(["finetune", "retrieval", "--config", str(cfg), "--resume"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"at step {at}" in out
    out_ref, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out_ref
    rows, ref_rows = _loss_rows(tmp_path / "killed"), _loss_rows(tmp_path / "ref")
    assert [r["step"] for r in ref_rows] == list(range(1, 41))
    assert rows == ref_rows


def test_resume_errors_are_one_line(synth: Path, tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, "glue", _glue_config(synth, tmp_path / "run"))
    assert main(["finetune", "glue", "--config", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: no checkpoint in"), err
    # `--resume key=value`: the override is not taken for a checkpoint path
    assert main(["finetune", "glue", "--config", str(cfg), "--resume", "train.steps=1"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_fp16_off_cuda_is_a_clear_error(synth: Path, tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, "glue", _glue_config(synth, tmp_path / "run"))
    assert main(["finetune", "glue", "--config", str(cfg), "precision=fp16"]) == 2
    assert "error: precision fp16 needs a CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------- accumulation, bf16
def _first_step_grads(cfg: dict, tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    """The gradients the optimizer sees at the first step (an optimizer pre-step hook)."""
    from xfm.core.config import load_config
    from xfm.tasks.base import FinetuneConfig
    from xfm.tasks.finetune import Finetuner

    tuner = Finetuner(load_config(FinetuneConfig, str(_write(tmp_path, name, cfg))))
    tuner.setup()
    grads: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in tuner.model.named_parameters()}

    def capture(optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[names[id(p)]] = p.grad.detach().clone()

    tuner.engine.optimizer.register_step_pre_hook(capture)
    tuner.train_step()
    tuner.close()
    return grads


def test_gradient_accumulation_equals_one_larger_batch(synth: Path, tmp_path: Path) -> None:
    """``train.accumulate=2`` with batches of 4: the gradient of the mean-reduced GLUE loss
    equals that of one batch of 8 (the same 8 samples); one batch of 4 differs."""
    big = _first_step_grads(_glue_config(synth, tmp_path / "a", batch_size=8), tmp_path, "big")
    acc = _first_step_grads(
        _glue_config(synth, tmp_path / "b", batch_size=4, accumulate=2), tmp_path, "acc"
    )
    small = _first_step_grads(_glue_config(synth, tmp_path / "c", batch_size=4), tmp_path, "s")
    assert set(big) == set(acc) and len(big) > 10
    for name, g in big.items():
        torch.testing.assert_close(acc[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert max(float((small[n] - g).abs().max()) for n, g in big.items()) > 1e-4


def test_bf16_autocast_finetunes(synth: Path, tmp_path: Path, capsys) -> None:
    """``precision=bf16`` on CPU: the forward runs under autocast (losses differ from fp32 by
    bf16 rounding only), weights and optimizer state stay fp32, checkpoints resume."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _glue_config(synth, tmp_path / precision, checkpoint_every=1, keep=0)
        path = _write(tmp_path, precision, cfg)
        assert main(["finetune", "glue", "--config", str(path), f"precision={precision}"]) == 0
        losses[precision] = [r["loss"] for r in _loss_rows(tmp_path / precision)]
    assert len(losses["bf16"]) == 3 and all(torch.isfinite(torch.tensor(losses["bf16"])))
    assert losses["bf16"] != losses["fp32"]
    torch.testing.assert_close(losses["bf16"], losses["fp32"], atol=0.05, rtol=0)
    state = torch.load(tmp_path / "bf16" / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    # resume the bf16 run from step 2: step 3 is the same
    step2 = tmp_path / "bf16" / "checkpoints" / "step_00000002.pt"
    cfg = _glue_config(synth, tmp_path / "bf16_resumed")
    path = _write(tmp_path, "bf16_resumed", cfg)
    args = ["finetune", "glue", "--config", str(path), "precision=bf16", "--resume", str(step2)]
    assert main(args) == 0
    assert [r["loss"] for r in _loss_rows(tmp_path / "bf16_resumed")] == losses["bf16"][2:]


def test_resume_with_a_lower_lr_scales_the_schedule(synth: Path, tmp_path: Path) -> None:
    """Fine-tuning resumes through the same engine: ``optim.lr`` halved on ``--resume`` halves
    the lr of every later step (the schedule's factor depends on the step only)."""
    cfg = _glue_config(synth, tmp_path / "full", steps=4, checkpoint_every=2, keep=0)
    assert main(["finetune", "glue", "--config", str(_write(tmp_path, "full", cfg))]) == 0
    step2 = tmp_path / "full" / "checkpoints" / "step_00000002.pt"
    path = _write(tmp_path, "low", _glue_config(synth, tmp_path / "low", steps=4))
    assert (
        main(["finetune", "glue", "--config", str(path), "optim.lr=5e-4", "--resume", str(step2)])
        == 0
    )
    full = {r["step"]: r["lr"] for r in _loss_rows(tmp_path / "full")}
    low = {r["step"]: r["lr"] for r in _loss_rows(tmp_path / "low")}
    assert sorted(low) == [3.0, 4.0] and full[3.0] > 0
    assert low == pytest.approx({k: full[k] / 2 for k in low})


def test_non_finite_loss_stops_or_skips(synth: Path, tmp_path: Path, capsys) -> None:
    """An absurd lr blows the weights up: ``stop`` (default) ends with one ``error:`` line
    naming the loss and the step, exit 2; ``skip_step`` finishes and counts the skipped
    steps in eval.json."""
    cfg = _glue_config(synth, tmp_path / "stop", steps=4)
    cfg["optim"]["lr"] = 1e30
    assert main(["finetune", "glue", "--config", str(_write(tmp_path, "stop", cfg))]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "non-finite loss total = " in err[0] and " at step " in err[0], err
    cfg = _glue_config(synth, tmp_path / "skip", steps=4)
    cfg["optim"].update(lr=1e30, on_nonfinite="skip_step")
    assert main(["finetune", "glue", "--config", str(_write(tmp_path, "skip", cfg))]) == 0
    summary = json.loads((tmp_path / "skip" / "eval.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_steps"] >= 1


# ------------------------------------------------------------------------------ torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_and_reference(cfg: Path, tmp_path: Path) -> tuple[list[dict], dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(SCRIPT), str(cfg), str(tmp_path / "r-RANK.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"r-{r}.pt", weights_only=True) for r in (0, 1)]
    ref_cmd = [sys.executable, str(SCRIPT), str(cfg), str(tmp_path / "ref-RANK.pt"), "reference"]
    proc = subprocess.run(ref_cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ranks, torch.load(tmp_path / "ref-0.pt", weights_only=True)


def _check_ddp(ranks: list[dict], ref: dict, steps: int) -> None:
    r0, r1 = ranks
    assert len(r0["losses"]) == len(r1["losses"]) == len(ref["losses"]) == steps
    assert r0["losses"] != r1["losses"]  # each rank trained on its own part of the data
    for name, value in r0["state"].items():  # DDP: the same weights on every rank
        assert torch.equal(value, r1["state"][name]), name
    # = one process on the union of the ranks' batches (mean-reduced loss, no dropout)
    mean = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
    torch.testing.assert_close(mean, ref["losses"], atol=2e-5, rtol=2e-5)
    for name, value in ref["state"].items():
        torch.testing.assert_close(r0["state"][name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.distributed
def test_torchrun_glue_with_accumulation_equals_one_process(synth: Path, tmp_path: Path) -> None:
    """GLUE on two ranks (DDP, gloo), two micro-batches of 4 per step (``no_sync`` on the
    first): identical weights on both ranks, equal to one process stepping on the 16 samples
    the two ranks read per step."""
    cfg = _write(tmp_path, "glue", _glue_config(synth, tmp_path / "run", accumulate=2))
    ranks, ref = _torchrun_and_reference(cfg, tmp_path)
    _check_ddp(ranks, ref, 3)
    assert (tmp_path / "run" / "checkpoints" / "step_00000003.pt").is_file()
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.distributed
def test_torchrun_nlvr_equals_one_process(synth: Path, tmp_path: Path) -> None:
    """NLVR2 (fusion encoder over two images) on two ranks: identical weights on both ranks,
    equal to one process on the union of their batches; the run evaluates and checkpoints."""
    cfg = _write(tmp_path, "nlvr", _fusion_config(synth, tmp_path / "run", "nlvr"))
    ranks, ref = _torchrun_and_reference(cfg, tmp_path)
    _check_ddp(ranks, ref, 3)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["loader"]["world_size"] == 2
