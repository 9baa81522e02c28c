"""Trust: non-finite losses (``optim.on_nonfinite``), intended changes on ``--resume`` and
bad-sample counts that survive a resume.

A NaN is injected the way it arises in practice: the ITC features of one step (the model's
``itc_features``) become NaN, so that the ITC loss, and the similarities ITM samples its hard
negatives from, are NaN. Without the check right after each objective the run would end inside
``torch.multinomial`` ("probability tensor contains either inf, nan or element < 0").
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from xfm.core.checkpoint import CheckpointError
from xfm.train.checkpointing import latest_checkpoint, load_training_state
from xfm.train.metrics import read_metrics
from xfm.train.nonfinite import NonFiniteLossError
from xfm.train.objectives.itm import sample_hard_negatives

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import loss_rows, run_trainer, tiny_config, write_config


def _config(synth: Path, run: Path, steps: int = 4, objectives: dict | None = None) -> dict:
    """The tiny model on the image-text source only, no evaluation, no plot."""
    cfg = tiny_config(synth, run, steps=steps)
    source = cfg["data"]["sources"]["image_text"]
    if objectives is not None:
        source["objectives"] = objectives
    cfg["data"]["sources"] = {"image_text": source}
    cfg["data"].pop("eval_url")
    cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
    return cfg


def _nan_itc_features(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """The ITC features of the ``at_call``-th training forward (1-based; one per step here) are
    NaN. The forward of the unused-parameter probe at start-up comes first and is not counted."""
    from xfm.fusion.model import XFM as Model

    original = Model.itc_features
    calls = [0]

    def patched(self, vision_states, text_states):
        calls[0] += 1
        image_feat, text_feat = original(self, vision_states, text_states)
        if at_call and calls[0] == at_call + 1:  # + 1: the probe's forward
            image_feat = image_feat * float("nan")
        return image_feat, text_feat

    monkeypatch.setattr(Model, "itc_features", patched)


def test_itm_sampling_reports_non_finite_similarities() -> None:
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    nan = feats.clone()
    nan[2, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite value itm \(ITC similarities"):
        sample_hard_negatives(nan, feats, torch.tensor(0.07))


def test_stop_names_itc_and_the_step_and_keeps_the_checkpoint(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default recipe (ITC before ITM): the ITC loss is caught right after its forward,
    before ITM samples from its similarities; the newest checkpoint (step 2) is intact."""
    cfg = _config(synth_dir, tmp_path / "run")
    _nan_itc_features(monkeypatch, at_call=3)
    with pytest.raises(NonFiniteLossError) as err:
        run_trainer(cfg, tmp_path)
    assert str(err.value).startswith("non-finite loss image_text/itc = nan at step 3 (")
    assert "optim.on_nonfinite=stop" in str(err.value)
    assert "newest checkpoint (step 2) is intact: --resume it with a lower optim.lr" in str(
        err.value
    )
    ckpts = str(tmp_path / "run" / "checkpoints")
    url = latest_checkpoint(ckpts)
    assert url is not None and url.endswith("step_00000002.pt")
    assert load_training_state(url)["step"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [1.0, 2.0]


def test_stop_with_itm_alone_fails_before_its_sampling(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(synth_dir, tmp_path / "run", objectives={"itm": 1.0})
    _nan_itc_features(monkeypatch, at_call=2)
    with pytest.raises(NonFiniteLossError) as err:
        run_trainer(cfg, tmp_path)
    assert str(err.value).startswith(
        "non-finite value image_text/itm (ITC similarities it samples from) = nan at step 2"
    )
    assert "no checkpoint was written yet" in str(err.value)  # (checkpoint.every 2)


PATCH_AND_RUN = textwrap.dedent(
    """
    import runpy, sys
    from xfm.fusion.model import XFM
    original, calls = XFM.itc_features, [0]
    def patched(self, v, t):
        calls[0] += 1
        i, t = original(self, v, t)
        return (i * float("nan") if calls[0] == 3 + 1 else i), t  # + 1: the probe
    XFM.itc_features = patched
    sys.argv = ["xfm", *sys.argv[1:]]
    runpy.run_module("xfm.core.cli", run_name="__main__")
    """
)


@pytest.mark.slow
def test_cli_stop_is_one_error_line_then_resume_with_a_lower_lr(
    synth_dir: Path, tmp_path: Path
) -> None:
    """``xfm pretrain`` ends with exit 2 and one ``error:`` line naming the loss and step;
    the natural recovery, ``--resume`` with half the learning rate, is accepted."""
    cfg = _config(synth_dir, tmp_path / "run")
    path = write_config(tmp_path / "cfg.yaml", cfg)
    script = tmp_path / "nan_run.py"
    script.write_text(PATCH_AND_RUN)
    proc = subprocess.run(
        [sys.executable, str(script), "pretrain", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "image_text/itc = nan at step 3" in errors[0], proc.stderr
    lower_lr = ["pretrain", "--config", str(path), "optim.lr=5e-4", "--resume"]
    resumed = subprocess.run(
        [sys.executable, "-m", "xfm.core.cli", *lower_lr],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step_00000002.pt at step 2" in resumed.stdout
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_resume_with_changed_lr_and_weight_decay_follows_them(
    synth_dir: Path, tmp_path: Path
) -> None:
    """Resumed at step 2 with ``optim.lr`` halved and another weight decay, the optimizer's
    param groups and the schedule's base lrs are those of a run configured so from the start
    (the schedule's factor depends on the step only); the old ones are gone."""
    cfg = _config(synth_dir, tmp_path / "run", steps=6)
    run_trainer(cfg, tmp_path, until=2)
    changed = {"optim.lr": 5e-4, "optim.weight_decay": 0.05}
    resumed, _ = run_trainer(cfg, tmp_path, resume=True, until=3, **changed)
    ref_cfg = _config(synth_dir, tmp_path / "ref", steps=6)
    reference, _ = run_trainer(ref_cfg, tmp_path, until=3, **changed)

    def groups(trainer) -> list[dict]:
        return [
            {k: v for k, v in g.items() if k != "params"}
            for g in trainer.engine.optimizer.param_groups
        ]

    assert groups(resumed) == groups(reference)
    assert resumed.engine.scheduler.base_lrs == reference.engine.scheduler.base_lrs
    assert {g["weight_decay"] for g in groups(resumed)} <= {0.0, 0.05}
    lr3 = {int(r["step"]): r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.csv")}
    ref3 = {int(r["step"]): r["lr"] for r in read_metrics(tmp_path / "ref" / "metrics.csv")}
    assert lr3[3] == pytest.approx(ref3[3]) and lr3[2] == pytest.approx(2 * ref3[2])


def test_resume_still_refuses_model_data_and_step_shape_changes(
    synth_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(synth_dir, tmp_path / "run", steps=2)
    run_trainer(cfg, tmp_path)
    cfg["optim"]["accumulate"] = 2
    cfg["data"]["sources"]["image_text"]["batch_size"] = 4
    cfg["optim"]["lr"] = 5e-4  # allowed: not listed
    with pytest.raises(CheckpointError) as err:
        run_trainer(cfg, tmp_path, resume=True, steps=4)
    msg = str(err.value)
    assert "optim.accumulate: 1 in the checkpoint, 2 now" in msg
    assert "data.sources.image_text.batch_size: 8 in the checkpoint, 4 now" in msg
    assert "optim.lr" not in msg


def test_skip_step_discards_the_step_counts_it_and_resumes_exactly(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Step 1 is NaN: skipped (a warning names the loss), counted in metrics, summary and
    checkpoint; the optimizer and schedule made 3 steps of 4. Stopping at 2 and resuming gives
    the same rows, the count included."""
    cfg = _config(synth_dir, tmp_path / "full")
    cfg["optim"]["on_nonfinite"] = "skip_step"
    _nan_itc_features(monkeypatch, at_call=1)
    with caplog.at_level("WARNING", logger="xfm.train"):
        trainer, summary = run_trainer(cfg, tmp_path)
    assert "non-finite loss image_text/itc = nan at step 1: step skipped" in caplog.text
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    assert trainer.engine.scheduler.last_epoch == 3
    adam_steps = {int(s["step"]) for s in trainer.engine.optimizer.state.values()}
    assert adam_steps == {3}
    rows = loss_rows(tmp_path / "full")
    assert [r["skipped_steps"] for r in rows] == [1.0, 1.0, 1.0]  # (step 1 has no loss)
    assert [r["step"] for r in rows] == [2.0, 3.0, 4.0]

    half = _config(synth_dir, tmp_path / "half")
    half["optim"]["on_nonfinite"] = "skip_step"
    _nan_itc_features(monkeypatch, at_call=1)
    run_trainer(half, tmp_path, until=2)
    _nan_itc_features(monkeypatch, at_call=0)  # (never)
    _, resumed = run_trainer(half, tmp_path, resume=True)
    assert resumed["skipped_steps"] == 1
    assert loss_rows(tmp_path / "half") == rows


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_sample_counts_are_reported_and_survive_resume(synth_dir: Path, tmp_path: Path) -> None:
    """16 images, 3 corrupt, batches of 4, 4 steps = one epoch: ``bad/image`` rises to 3 in
    metrics.csv and the summary, also when the run is stopped at step 2 and resumed."""
    from xfm.train.data import ImageWriter

    data = tmp_path / "images"
    with ImageWriter(str(data)) as w:
        for i in range(16):
            if i in (2, 7, 13):
                w.write_unchecked({"id": f"s{i}", "image": b"\x89PNG garbage", "label": 0})
            else:
                w.write(_png((10 * i, 0, 0)), id=f"s{i}", label=0)

    def config(run: str) -> dict:
        cfg = tiny_config(synth_dir, tmp_path / run, steps=4)
        cfg["data"]["sources"] = {"image": {"url": str(data), "batch_size": 4}}
        cfg["data"].pop("eval_url")
        cfg["data"]["loader"] = {"max_bad_fraction": 0.5}
        cfg["log"] = {"progress": False, "tensorboard": False, "plot": False}
        return cfg

    _, summary = run_trainer(config("full"), tmp_path)
    assert summary["bad_samples"] == {"image": 3}
    rows = loss_rows(tmp_path / "full")
    counts = [r["bad/image"] for r in rows]
    assert counts == sorted(counts) and counts[-1] == 3.0
    run_trainer(config("half"), tmp_path, until=2)
    _, resumed = run_trainer(config("half"), tmp_path, resume=True)
    assert resumed["bad_samples"] == {"image": 3}
    assert loss_rows(tmp_path / "half") == rows
