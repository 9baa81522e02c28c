"""``xfm plot RUN_DIR`` as a user runs it: the console script in a subprocess."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xfm.train.metrics import MetricsLogger


def _xfm() -> list[str]:
    exe = shutil.which("xfm") or str(Path(sys.executable).with_name("xfm"))
    return [exe]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_xfm(), "plot", *args], capture_output=True, text=True, timeout=120)


def test_xfm_plot_writes_a_png_of_every_loss(tmp_path):
    logger = MetricsLogger(
        tmp_path, ["loss", "image_text/itc", "image_text/mim", "eval/tr_r1"], tensorboard=False
    )
    for step in range(1, 41):
        row = {"loss": 10 * math.exp(-step / 20), "image_text/itc": 3.0 - step / 40}
        row["image_text/mim"] = 1.0 / step
        if step % 20 == 0:
            row["eval/tr_r1"] = step / 2
        logger.log(step, row)
    logger.close()
    proc = _run(str(tmp_path), "--smooth", "5")
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "loss_curves.png"
    assert proc.stdout.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:  # 4 panels in 3 columns -> 2 rows, at 110 dpi
        width, height = im.size
    assert width == pytest.approx(4.2 * 3 * 110, abs=2)
    assert height == pytest.approx(2.8 * 2 * 110, abs=2)
    out = tmp_path / "elsewhere.png"
    assert _run(str(tmp_path), "--out", str(out)).returncode == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_xfm_plot_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    proc = _run(str(tmp_path))
    assert proc.returncode == 2
    assert "has no metrics.csv: is it an xfm pretrain run folder?" in proc.stderr
    (tmp_path / "metrics.csv").write_text("step,loss\n")
    proc = _run(str(tmp_path))
    assert proc.returncode == 2
    assert "has no rows yet" in proc.stderr


def test_panels_order_chance_and_title(tmp_path):
    from xfm.train.plot import ITM_PRIOR, _title, panels

    # the loss of a constant "positive with p = 1/3" on 1 positive + 2 negatives
    prior = ITM_PRIOR
    assert prior == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
    assert prior == pytest.approx(0.6365, abs=1e-4)
    cols = ["loss", "image_text/itm", "lr", "samples_per_s", "bad/image_text", "skipped_steps"]
    evals = ["eval/ir@10", "eval/ir@1", "eval/ir@5", "eval/tr@1", "eval/r_mean", "eval/chance@1"]
    logger = MetricsLogger(tmp_path, cols + evals, tensorboard=False)
    for step in range(1, 21):
        row = {"loss": 1.0 / step, "image_text/itm": 0.636, "lr": 1e-3, "samples_per_s": 9.0}
        row |= {"bad/image_text": float(step // 5), "skipped_steps": 0.0}  # counters: no panel
        if step % 10 == 0:
            row |= {k: float(step) for k in evals[:-1]} | {"eval/chance@1": 0.5}
        logger.log(step, row)
    logger.close()
    from xfm.train.metrics import read_metrics

    assert panels(read_metrics(tmp_path / "metrics.csv")) == [
        "loss",
        "image_text/itm",
        "eval/tr@1",
        "eval/ir@1",
        "eval/ir@5",
        "eval/ir@10",
        "eval/r_mean",
    ]
    assert _run(str(tmp_path)).returncode == 0
    assert _title(tmp_path) == f"xfm pretrain: {tmp_path.name}"
    (tmp_path / "config.yaml").write_text("task: retrieval\nrun_dir: x\n")
    assert _title(tmp_path) == f"xfm finetune retrieval: {tmp_path.name}"
