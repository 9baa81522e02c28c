"""A real plug-in: a throwaway distribution adds a vision encoder, a data source and an objective
through entry points, and ``xfm pretrain`` trains with all three from YAML alone.

The distribution (``plugin_dist/``) is ``pip install``-ed into the current environment (no
index, no build isolation: only what is installed is used) and uninstalled afterwards, so the
other tests never see it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xfm.core.checkpoint import load_state_dict
from xfm.train.metrics import read_metrics

HERE = Path(__file__).parent
DIST = "xfm-toy-plugin"
PIP = [sys.executable, "-m", "pip"]
XFM = [sys.executable, "-m", "xfm.core.cli"]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _uninstall() -> None:
    subprocess.run([*PIP, "uninstall", "-y", DIST], capture_output=True, timeout=120)


@pytest.fixture
def plugin(tmp_path: Path):
    """Install the toy plug-in distribution (built from a copy in ``tmp_path``); remove it after."""
    pytest.importorskip("setuptools", reason="building the plug-in needs setuptools")
    src = tmp_path / "dist"
    shutil.copytree(HERE / "plugin_dist", src)
    _uninstall()  # a leftover of a killed run
    try:
        _run(
            [*PIP, "install", "--no-deps", "--no-index", "--no-build-isolation", "-q", str(src)],
            timeout=180,
        )
        yield
    finally:
        _uninstall()
        from xfm.core import registry

        registry.refresh()


def _config(tmp_path: Path, data: Path, tokenizer: Path) -> dict:
    return {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "steps": 4,
        "device": "cpu",
        "threads": 1,
        "model": {
            "name": "xfm",
            "embed_dim": 16,
            "text": {
                "name": "roberta",
                "width": 16,
                "layers": 1,
                "heads": 2,
                "ffn_dim": 32,
                "max_positions": 32,
                "type_vocab_size": 1,
            },
            "vision": {"name": "toy_patches", "width": 16},
            "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 32},
        },
        "data": {
            "tokenizer": str(tokenizer),
            "process": {"image_size": 16, "patch_size": 8, "mim": False, "max_caption_len": 16},
            "sources": {"video_text": {"url": str(data), "batch_size": 8}},
        },
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "checkpoint": {"every": 0},
        "eval": {"at_end": False},
        "log": {"progress": False, "tensorboard": False, "plot": False},
    }


def test_a_pip_installed_plugin_pretrains_from_yaml_alone(plugin, tmp_path: Path) -> None:
    from xfm.train.data.synth.tokenizer import train_bpe_tokenizer

    # xfm sees the three components, provided by the plug-in distribution
    listed = json.loads(_run([*XFM, "info", "--json"]).stdout)["components"]
    for kind, name in [
        ("vision_encoder", "toy_patches"),
        ("data_source", "video_text"),
        ("objective", "video_itc"),
    ]:
        rows = [c for c in listed[kind] if c["name"] == name]
        assert [r["distribution"] for r in rows] == [DIST], (kind, listed[kind])

    # the plug-in writes its own MDS shards through xfm's writer for its source
    data = tmp_path / "clips"
    code = f"import xfm_toy_plugin as p; print(p.write_demo({str(data)!r}, 24))"
    assert _run([sys.executable, "-c", code]).stdout.split() == ["24"]
    captions = [
        f"a {c} light {v}" for c in ("red", "green", "blue") for v in ("blinking", "fading")
    ]
    tokenizer = train_bpe_tokenizer(captions * 4, tmp_path / "tokenizer", vocab_size=300)

    cfg_path = tmp_path / "plugin.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, data, tokenizer)))
    _run([*XFM, "pretrain", "--config", str(cfg_path)], timeout=300)

    run = tmp_path / "run"
    rows = [r for r in read_metrics(run / "metrics.csv") if "loss" in r]
    assert len(rows) == 4
    # the only loss is the plug-in objective's, on the plug-in source
    assert all(r["loss"] == pytest.approx(r["video_text/video_itc"]) for r in rows)
    # 8 clips per batch, 6 distinct captions: ITC starts near log(8) and is finite
    assert 0.5 < rows[0]["video_text/video_itc"] < 5.0
    # the model was built around the plug-in encoder, and the encoder was trained
    weights = load_state_dict(str(run / "checkpoints" / "model.safetensors"))
    marker = weights["vision_encoder.toy_marker"]
    assert marker.shape == (16,)
    assert not bool((marker == 1.0).all()), "the plug-in encoder received no gradient"
    assert not any(k.startswith("vision_encoder.blocks") for k in weights)  # not BEiT
