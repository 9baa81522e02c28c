"""The pretraining loop: outputs, exact resume after SIGKILL, corrupt / mismatched checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from xfm.core.checkpoint import CheckpointError
from xfm.core.config import load_config
from xfm.train.checkpointing import latest_checkpoint, load_training_state
from xfm.train.config import PretrainConfig
from xfm.train.engine.run_dir import RunFolderError
from xfm.train.metrics import read_metrics
from xfm.train.optim import lr_lambda, param_groups
from xfm.train.trainer import Trainer, trend

ROOT = Path(__file__).resolve().parents[3]


def tiny_config(synth: Path, run_dir: Path, **top) -> dict:
    """A micro model on the session's synthetic dataset (32 px, patch 8), every source."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 3,
        "steps": 8,
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
                "dropout": 0.1,
            },
            "vision": {
                "name": "beit_v2",
                "width": 32,
                "layers": 1,
                "heads": 2,
                "mlp_ratio": 2.0,
                "drop_path_rate": 0.1,
            },
            "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64},
        },
        "data": {
            "tokenizer": f"{synth}/tokenizer",
            "eval_url": f"{synth}/mds/image_text/test",
            "process": {
                "image_size": 32,
                "patch_size": 8,
                "mim_min_block": 2,
                "augment": True,
                "max_text_len": 40,
                "max_caption_len": 24,
            },
            "sources": {
                "text": {"url": f"{synth}/mds/text/train", "batch_size": 4},
                "image_text": {"url": f"{synth}/mds/image_text/train", "batch_size": 8},
                "region": {"url": f"{synth}/mds/region/train", "batch_size": 4},
                "image": {"url": f"{synth}/mds/image/train", "batch_size": 4},
            },
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "checkpoint": {"every": 2, "keep": 2},
        "eval": {"every": 0, "batch_size": 16},
        "log": {"progress": False, "tensorboard": True, "plot": True},
    }
    cfg.update(top)
    return cfg


def held_out_images(synth: Path) -> int:
    """Distinct images of the held-out split, as retrieval counts them (scenes that every
    caption describes alike share an ``image_id``)."""
    items = json.loads((synth / "annotations" / "test.json").read_text())
    return len({item["image_id"] for item in items})


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_trainer(
    cfg: dict, tmp: Path, resume: bool | str = False, until: int | None = None, **over
) -> tuple[Trainer, dict]:
    path = write_config(tmp / f"cfg_{time.monotonic_ns()}.yaml", cfg)
    config = load_config(PretrainConfig, path, [f"{k}={v}" for k, v in over.items()])
    trainer = Trainer(config, resume=resume, print_fn=lambda _: None)
    try:
        trainer.setup()
        summary = trainer.fit(until)
    finally:
        trainer.close()
    return trainer, summary


def loss_rows(run_dir: Path) -> list[dict[str, float]]:
    """Per-step metrics without the timing column."""
    return [
        {k: v for k, v in r.items() if k != "samples_per_s" and not k.startswith("eval/")}
        for r in read_metrics(run_dir / "metrics.csv")
        if "loss" in r
    ]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xfm.core.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


# ------------------------------------------------------------------------------ units
def test_lr_schedule_warmup_then_linear_decay() -> None:
    assert [round(lr_lambda(s, 4, 12), 4) for s in range(13)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
        0.0,
    ]


def test_param_groups_no_decay_and_new_lr(golden_model) -> None:
    from xfm.train.config import OptimSection

    groups = param_groups(golden_model, OptimSection())
    seen = [n for g in groups for n in g["names"]]
    assert len(seen) == len(set(seen))
    unique = {id(p) for p in golden_model.parameters()}
    assert len(seen) == len(unique)
    for g in groups:
        for name in g["names"]:
            is_norm = "norm" in name or name.endswith("bias") or name == "temp"
            assert (g["weight_decay"] == 0.0) == (is_norm or name.endswith("_bias")), name
            new = name.split(".")[0] in (
                "vision_proj",
                "text_proj",
                "itm_head",
                "bbox_head",
                "fusion_mlm_head",
                "temp",
            )
            assert g["lr_mult"] == (2.0 if new else 1.0), name


# ----------------------------------------------------------------------------- the run
def test_pretrain_outputs_and_exact_resume(synth_dir: Path, tmp_path: Path) -> None:
    """A full run writes metrics (CSV + TensorBoard), a PNG, checkpoints and safetensors;
    stopping at step 4 and resuming gives bit-identical losses, weights and data order."""
    cfg = tiny_config(synth_dir, tmp_path / "full", eval={"every": 4, "batch_size": 16})
    trainer, summary = run_trainer(cfg, tmp_path)
    run = tmp_path / "full"
    rows = loss_rows(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert set(trainer.columns) <= set(rows[0])
    for key in (
        "text/text_mlm",
        "image_text/itc",
        "image_text/itm",
        "image_text/fusion_mlm",
        "image_text/mim",
        "region/itc",
        "region/itm",
        "region/fusion_mlm",
        "region/bbox",
        "region/giou",
        "image/mim",
    ):
        assert key in rows[0]
    assert (run / "loss_curves.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.*"))
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == [
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    assert (ckpts / "latest").read_text() == "step_00000008.pt"
    from safetensors.torch import load_file

    weights = load_file(str(ckpts / "model.safetensors"))
    state = trainer.model.state_dict()
    assert torch.equal(weights["vision_proj.weight"], state["vision_proj.weight"])
    assert summary["retrieval"] is not None
    assert summary["retrieval"]["images"] == held_out_images(synth_dir)
    evals = [r for r in read_metrics(run / "metrics.csv") if "eval/tr@1" in r]
    assert [int(r["step"]) for r in evals] == [4, 8]
    chance = 100 / held_out_images(synth_dir)  # logged for the plot's chance lines
    assert all(r["eval/chance@1"] == pytest.approx(chance) for r in evals)

    # first 4 steps only, then resume to 8
    half = tiny_config(synth_dir, tmp_path / "half", eval={"every": 4, "batch_size": 16})
    run_trainer(half, tmp_path, until=4)
    resumed, _ = run_trainer(half, tmp_path, resume=True)
    assert loss_rows(tmp_path / "half") == rows
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(
    synth_dir: Path, tmp_path: Path
) -> None:
    """``xfm pretrain`` killed with SIGKILL mid-epoch resumes with the same loss sequence."""
    base = tiny_config(synth_dir, tmp_path / "ref", steps=10)
    base["checkpoint"] = {"every": 2, "keep": 0}
    base["log"]["tensorboard"] = False
    base["log"]["plot"] = False
    base["data"]["loader"] = {"num_workers": 1}
    ref = _cli(["pretrain", "--config", str(write_config(tmp_path / "ref.yaml", base))])
    started = time.monotonic() + 120  # let ref claim its streaming shared memory first
    while time.monotonic() < started and ref.poll() is None:
        if (tmp_path / "ref" / "config.yaml").is_file():  # written once its loaders exist
            break
        time.sleep(0.05)
    killed_cfg = dict(base, run_dir=str(tmp_path / "killed"))
    killed = _cli(["pretrain", "--config", str(write_config(tmp_path / "k.yaml", killed_cfg))])
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if latest.is_file() and latest.read_text() >= "step_00000004.pt":
            break
        time.sleep(0.05)
    assert killed.poll() is None, f"run ended before it could be killed:\n{killed.stdout.read()}"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    at = int(latest.read_text()[5:13])
    assert 4 <= at < 10  # 48 images x 2 captions / batch 8 = 12 steps per epoch: mid-epoch
    resumed = _cli(["pretrain", "--config", str(tmp_path / "k.yaml"), "--resume"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out and f"at step {at}" in out
    out_ref, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out_ref
    assert loss_rows(tmp_path / "killed") == loss_rows(tmp_path / "ref")


# ------------------------------------------------------------------------ bad resumes
@pytest.fixture
def finished_run(synth_dir: Path, tmp_path: Path) -> tuple[dict, Path]:
    cfg = tiny_config(synth_dir, tmp_path / "run", steps=2, eval={"every": 0, "at_end": False})
    cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
    run_trainer(cfg, tmp_path)
    return cfg, tmp_path / "run" / "checkpoints"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(
    finished_run, tmp_path: Path
) -> None:
    cfg, ckpts = finished_run
    target = ckpts / "step_00000002.pt"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    before = _snapshot(ckpts)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated"):
        run_trainer(cfg, tmp_path, resume=True, steps=4)
    assert _snapshot(ckpts) == before
    # the CLI says so in one line and exits 2
    proc = _cli(
        ["pretrain", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "steps=4", "--resume"]
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert "error:" in out and "step_00000002.pt" in out and "corrupt" in out
    assert _snapshot(ckpts) == before


def test_mismatched_config_is_a_clear_error_and_nothing_is_overwritten(
    finished_run, tmp_path: Path
) -> None:
    cfg, ckpts = finished_run
    before = _snapshot(ckpts)
    cfg["model"]["vision"]["layers"] = 2
    cfg["optim"]["new_param_lr_mult"] = 3.0  # (optim.lr may change: test_trust_nonfinite)
    with pytest.raises(CheckpointError) as err:
        run_trainer(cfg, tmp_path, resume=True, steps=4)
    msg = str(err.value)
    assert "model.vision.layers: 1 in the checkpoint, 2 now" in msg
    assert "optim.new_param_lr_mult: 2.0 in the checkpoint, 3.0 now" in msg
    assert _snapshot(ckpts) == before


def test_resume_without_checkpoint_is_a_clear_error(synth_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(synth_dir, tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_trainer(cfg, tmp_path, resume=True)
    assert latest_checkpoint(str(tmp_path / "none" / "checkpoints")) is None


def test_foreign_file_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="has no manifest"):
        load_training_state(str(path))
    with pytest.raises(CheckpointError, match="not an xfm training checkpoint"):
        load_training_state(str(path), verify=False)


# -------------------------------------------------------------------------- ablations
@pytest.mark.parametrize(
    ("name", "stop_gradient", "vision_guidance"),
    [
        ("tiny", True, True),
        ("ablation_no_stop_gradient", False, True),
        ("ablation_no_vision_guidance", True, False),
        ("ablation_neither", False, False),
    ],
)
def test_pretrain_configs_switch_the_techniques(
    synth_dir: Path, tmp_path: Path, name: str, stop_gradient: bool, vision_guidance: bool
) -> None:
    """The shipped configs (micro-sized here) route the image-text gradients as intended."""
    from xfm.train.config import load_pretrain_config

    micro = tiny_config(synth_dir, tmp_path / "run")
    over = [
        f"run_dir={tmp_path / 'run'}",
        "data.synth=null",
        "data.loader={}",
        "log.progress=false",
        f"model.text={micro['model']['text']}",
        f"model.vision={micro['model']['vision']}",
        f"model.fusion={micro['model']['fusion']}",
        f"data.process={micro['data']['process']}",
        f"data.sources={micro['data']['sources']}",
        f"data.tokenizer={micro['data']['tokenizer']}",
        "data.eval_url=''",
    ]
    cfg = load_pretrain_config(str(ROOT / "configs" / "pretrain" / f"{name}.yaml"), over)
    assert cfg.model["stop_gradient"] is stop_gradient
    assert cfg.model["vision_guidance"] is vision_guidance
    trainer = Trainer(cfg, print_fn=lambda _: None)
    trainer.setup()
    try:
        model = trainer.model
        assert bool(model._mim_teacher) is not vision_guidance
        batch = trainer.loader.next_step()["image_text"]
        total, _ = trainer.loss_module({"image_text": batch})
        total.backward()
        text_grad = model.text_encoder.layers[0].ffn.fc1.weight.grad  # ITC reaches it always
        assert text_grad is not None and bool(text_grad.any())
        # without ITC: the language encoder is reached only when stop gradient is off
        model.zero_grad(set_to_none=True)
        objs = [o for o in trainer.objectives["image_text"] if o[0] != "itc"]
        from xfm.train.loss import PretrainLoss

        total, _ = PretrainLoss(model, {"image_text": objs})({"image_text": batch})
        total.backward()
        grads = [p.grad for p in model.text_encoder.parameters()]
        reached = any(g is not None and bool(g.any()) for g in grads)
        assert reached is not stop_gradient
    finally:
        trainer.close()


# ------------------------------------------------------------------- remote checkpoints
@pytest.mark.cloud
@pytest.mark.parametrize("store", ["moto_s3", "gcs_emulator"])
def test_checkpoints_on_object_stores_resume_exactly(
    synth_dir: Path, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue(store)
    url = server.url("ckpt")
    cfg = tiny_config(synth_dir, tmp_path / "ref", steps=4, eval={"every": 0, "at_end": False})
    cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
    cfg["checkpoint"] = {"every": 2, "keep": 1}
    run_trainer(cfg, tmp_path)
    remote = dict(
        cfg, run_dir=str(tmp_path / "remote"), checkpoint={**cfg["checkpoint"], "url": url}
    )
    run_trainer(remote, tmp_path, until=2)
    assert latest_checkpoint(url) == url + "/step_00000002.pt"
    run_trainer(remote, tmp_path, resume=True)
    assert latest_checkpoint(url) == url + "/step_00000004.pt"
    from xfm.core.checkpoint.storage import resolve

    fs, path = resolve(url)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    # pruned (with its manifest), no temp files
    assert names == ["latest", "model.safetensors", "step_00000004.json", "step_00000004.pt"]
    assert loss_rows(tmp_path / "remote") == loss_rows(tmp_path / "ref")


def test_bf16_autocast_with_gradient_accumulation(synth_dir: Path, tmp_path: Path) -> None:
    """bf16 autocast on CPU trains; each optimizer step takes ``accumulate`` batches per source."""
    cfg = tiny_config(
        synth_dir, tmp_path / "bf16", steps=2, precision="bf16", eval={"every": 0, "at_end": False}
    )
    cfg["optim"]["accumulate"] = 2
    cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
    cfg["checkpoint"] = {"every": 0}
    trainer, _ = run_trainer(cfg, tmp_path)
    rows = loss_rows(tmp_path / "bf16")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    state = trainer.loader.state_dict()
    assert state["step"] == 4
    assert state["sources"]["image_text"]["sample_in_epoch"] == 4 * 8
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_retrieval_metrics_by_hand() -> None:
    from xfm.train.evaluation import retrieval_metrics

    # 3 images, 4 texts; texts 0,1 -> image 0, text 2 -> image 1, text 3 -> image 2
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5],  # image 0: best text 1 (its own) -> tr rank 0
            [0.8, 0.0, 0.3, 0.2],  # image 1: own text 2 ranked 2nd -> tr rank 1
            [0.9, 0.8, 0.7, 0.1],  # image 2: own text 3 ranked last -> tr rank 3
        ]
    )
    text_image = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(sim, text_image, ks=(1, 2))
    assert m["tr@1"] == pytest.approx(100 / 3) and m["tr@2"] == pytest.approx(200 / 3)
    # text -> image ranks: t0: image 2 (0.9) > image 1 (0.8) > image 0 -> rank 2;
    # t1: image 0 best -> 0; t2: image 2 (0.7) > image 1 (0.3) -> 1; t3: 0.5, 0.2 > 0.1 -> 2
    assert m["ir@1"] == pytest.approx(25.0) and m["ir@2"] == pytest.approx(50.0)
    assert m["chance@1"] == pytest.approx(100 / 3)


def test_trainer_gives_new_parameters_their_lr_multiplier(synth_dir: Path, tmp_path: Path) -> None:
    """The optimizer groups of a real run: the heads and projections new to pretraining get
    ``lr * new_param_lr_mult`` (the patterns name model parameters, not the loss wrapper's)."""
    cfg = tiny_config(synth_dir, tmp_path / "run")
    path = write_config(tmp_path / "cfg.yaml", cfg)
    config = load_config(PretrainConfig, path, ["optim.new_param_lr_mult=3.0"])
    trainer = Trainer(config, print_fn=lambda _: None)
    try:
        trainer.setup()
        lr_of = {id(p): g["lr"] for g in trainer.engine.optimizer.param_groups for p in g["params"]}
        model = trainer.model
        for p in [model.vision_proj.weight, model.itm_head[0].weight, model.temp]:
            assert lr_of[id(p)] == pytest.approx(3.0 * 1e-3 * 0.5), "new parameter"
        for p in [model.text_encoder.embeddings.word.weight, model.vision_encoder.cls_token]:
            assert lr_of[id(p)] == pytest.approx(1e-3 * 0.5), "pretrained parameter"
    finally:
        trainer.close()


# ------------------------------------------------------------- the run folder is never lost
def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def run_cfg(synth_dir: Path, tmp_path: Path) -> dict:
    cfg = tiny_config(synth_dir, tmp_path / "run", steps=4, eval={"every": 0, "at_end": False})
    cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
    return cfg


def test_an_earlier_run_is_refused_then_replaced_with_overwrite(
    run_cfg: dict, tmp_path: Path
) -> None:
    cfg, run = run_cfg, tmp_path / "run"
    run_trainer(cfg, tmp_path)  # checkpoints at steps 2 and 4
    before = _files(run)
    assert "checkpoints/step_00000004.pt" in before
    with pytest.raises(RunFolderError, match=r"already holds a run .*--resume.*--overwrite"):
        run_trainer(cfg, tmp_path)
    assert _files(run) == before  # nothing touched

    path = write_config(tmp_path / "again.yaml", {**cfg, "steps": 2})
    trainer = Trainer(load_config(PretrainConfig, path), print_fn=lambda _: None, overwrite=True)
    try:
        trainer.setup()
        trainer.fit()
    finally:
        trainer.close()
    after = _files(run)
    assert "checkpoints/step_00000004.pt" not in after  # the old run's checkpoint is gone
    assert "checkpoints/step_00000002.pt" in after
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [1.0, 2.0]


def test_resuming_a_finished_run_changes_nothing(run_cfg: dict, tmp_path: Path) -> None:
    cfg, run = run_cfg, tmp_path / "run"
    run_trainer(cfg, tmp_path)
    before = _files(run)
    _, summary = run_trainer(cfg, tmp_path, resume=True)
    assert summary["finished"] is True and summary["steps"] == 4
    assert _files(run) == before  # no duplicate metrics row, no new checkpoint or export


def test_trend_words() -> None:
    assert trend("image_text/itc", 3.4, 1.5) == "down"
    assert trend("image_text/itc", 3.4, 3.38) == "flat"
    assert trend("loss", 1.0, 1.5) == "NOT down"
    assert trend("loss", 1.0, math.nan) == "NOT down"
    assert trend("image_text/itm", 0.643, 0.635) == "at prior: learnt nothing"
    assert trend("region/itm", 0.75, 0.49) == "down"


def test_init_from_that_does_not_fit_is_refused_unless_init_strict_false() -> None:
    from torch import nn

    from xfm.core.checkpoint import load_into
    from xfm.train.init_check import check_init

    def model(width: int) -> nn.Module:
        return nn.ModuleDict(
            {"enc": nn.Linear(4, width), "out": nn.Linear(width, 2), "itm_head": nn.Linear(2, 2)}
        )

    source = {k: v for k, v in model(8).state_dict().items() if not k.startswith("itm_head.")}
    fits = load_into(model(8), source, strict=False)  # only a head new by design is missing
    line = check_init(fits, "ckpt", new_params=[r"^itm_head\."])
    assert line.startswith("4 tensors loaded, 2 new by design")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(2 keys\)"):
        check_init(fits, "ckpt")  # the head is not declared new
    other = load_into(model(16), source, strict=False)
    with pytest.raises(CheckpointError) as err:
        check_init(other, "runs/tiny/model.safetensors", new_params=[r"^itm_head\."])
    text = str(err.value)
    assert "different shapes (3 keys)" in text and "init_strict: false" in text
    assert "runs/tiny/model.safetensors" in text
    assert "with a different shape" in check_init(other, "x", strict=False)


def test_resume_on_another_number_of_ranks_picks_or_derives_each_rank_rng() -> None:
    """Rank ``r`` restores entry ``r`` of the checkpoint's RNG list; a rank beyond it is
    reseeded from (seed, rank, step): reproducible, and unlike any other rank's stream."""
    from xfm.train.checkpointing import capture_rng
    from xfm.train.engine.state import rank_rng_state, reseed_rank

    states = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        states.append(capture_rng())
    assert rank_rng_state(states, 1) is states[1]
    assert rank_rng_state(states, 2) is None
    assert rank_rng_state(states[0], 0) is states[0]  # one state: a single-process run
    assert rank_rng_state(states[0], 1) is None

    def draws(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator()
        reseed_rank(3, rank, step, gen)
        return torch.rand(4), torch.rand(4, generator=gen)

    a, b = draws(1, 5), draws(1, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in (draws(2, 5), draws(1, 6)):
        assert not torch.equal(a[0], other[0]) and not torch.equal(a[1], other[1])
    assert not torch.equal(a[0], a[1])
