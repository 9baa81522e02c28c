"""``xfm finetune`` / ``xfm eval`` / ``xfm search`` end to end on a tiny synthetic set (plumbing:
the models are far too small and short-trained to learn; the accuracy runs are in the README),
the official task-directory export, and retrieval evaluation sharded under real torchrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from xfm.core.cli import main

SCRIPT = Path(__file__).parent / "scripts" / "dist_retrieval.py"

MODEL = {
    "embed_dim": 16,
    "text": {
        "name": "roberta",
        "width": 32,
        "layers": 1,
        "heads": 2,
        "ffn_dim": 64,
        "max_positions": 40,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
    },
    "vision": {
        "name": "beit_v2",
        "width": 32,
        "layers": 1,
        "heads": 2,
        "mlp_ratio": 2.0,
        "patch_size": 8,
    },
    "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64},
}
FILES = {
    "retrieval": ("retrieval_train", "retrieval_test"),
    "nlvr": ("nlvr_train", "nlvr_test"),
    "grounding": ("refexp_train", "refexp_test"),
}
METRIC = {"retrieval": "r_mean", "nlvr": "accuracy", "grounding": "accuracy"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        SynthConfig(seed=3, image_size=32, num_train=24, num_test=8, num_text=8, vocab_size=300),
        progress=False,
    )
    return out


def _config(tmp_path: Path, synth: Path, task: str) -> Path:
    train, test = FILES[task]
    cfg = {
        "task": task,
        "run_dir": str(tmp_path / f"run_{task}"),
        "device": "cpu",
        "model": MODEL,
        "options": {"k_test": 4, "itm_batch_size": 8, "kv_chunk": 3} if task == "retrieval" else {},
        "data": {
            "synth": {"out": str(synth)},
            "train": f"{{synth}}/tasks/{train}.json",
            "eval": {"test": f"{{synth}}/tasks/{test}.json"},
            "image_size": 32,
        },
        "train": {"steps": 3, "batch_size": 4, "eval_batch_size": 8, "log_every": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
    }
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("task", sorted(FILES))
def test_finetune_then_eval(task: str, synth: Path, tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, synth, task)
    assert main(["finetune", task, "--config", str(cfg), "seed=1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tmp_path / f"run_{task}"
    assert summary["steps"] == 3
    assert f"test/{METRIC[task]}" in summary["eval"]
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "latest").is_file()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) >= 4
    # xfm eval on the run dir: same weights, same data -> the same numbers
    assert main(["eval", task, "--checkpoint", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key, value in summary["eval"].items():
        assert again[key] == pytest.approx(value, abs=1e-9), key


def test_eval_official_task_directory(synth: Path, tmp_path: Path, capsys) -> None:
    """A model exported as an official task checkpoint (official names + config.json) is
    evaluated with one command and scores exactly like the xfm checkpoint it came from."""
    from xfm.tasks.base import get_task
    from xfm.tasks.finetune import model_spec
    from xfm.tasks.official.commands import export_golden_dir

    cfg_path = _config(tmp_path, synth, "retrieval")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.pop("model")  # the model comes from the checkpoint's config.json
    no_model = tmp_path / "data_only.yaml"
    no_model.write_text(yaml.safe_dump(cfg))

    class Tok:
        vocab_size, pad_id = 300, 1

    from xfm.core.config import config_from_dict
    from xfm.tasks.base import FinetuneConfig

    torch.manual_seed(0)
    full = config_from_dict(FinetuneConfig, yaml.safe_load(cfg_path.read_text()))
    model = get_task("retrieval").build_model(model_spec(full, Tok()))
    export_golden_dir(model, tmp_path / "official")
    keys = set(json.loads((tmp_path / "official" / "config.json").read_text()))
    assert {"task", "vision", "text", "fusion"} <= keys
    assert (
        main(
            [
                "eval",
                "retrieval",
                "--checkpoint",
                str(tmp_path / "official"),
                "--config",
                str(no_model),
                "--json",
            ]
        )
        == 0
    )
    official = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    from xfm.tasks.finetune import save_task_model

    save_task_model(model, tmp_path / "ours.safetensors", "retrieval", model_spec(full, Tok()))
    assert (
        main(
            [
                "eval",
                "retrieval",
                "--checkpoint",
                str(tmp_path / "ours.safetensors"),
                "--config",
                str(no_model),
                "--json",
            ]
        )
        == 0
    )
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert official == pytest.approx(ours)


def test_search_ranks_a_folder(synth: Path, tmp_path: Path, capsys) -> None:
    from xfm.tasks.base import get_task
    from xfm.tasks.search import search_images
    from xfm.text.tokenizer import load_tokenizer

    cfg = _config(tmp_path, synth, "retrieval")
    assert main(["finetune", "retrieval", "--config", str(cfg), "train.steps=1"]) == 0
    capsys.readouterr()
    folder = synth / "images" / "test"
    argv = [
        "search",
        "--images",
        str(folder),
        "--checkpoint",
        str(tmp_path / "run_retrieval"),
        "--top",
        "5",
        "--rerank",
        "3",
        "a red circle",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert all("itm=" in line for line in lines[:3]) and "itm=" not in lines[3]
    # the ranking printed is the one the library returns
    from xfm.tasks.cli import build_eval_model

    model, _ = build_eval_model(get_task("retrieval"), str(tmp_path / "run_retrieval"), None)
    hits = search_images(
        model.eval(),
        load_tokenizer(synth / "tokenizer"),
        sorted(folder.glob("*.png")),
        "a red circle",
        image_size=32,
        rerank=3,
    )
    assert [h.path for h in hits[:5]] == [line.split()[-1] for line in lines]
    assert (
        main(
            [
                "search",
                "--images",
                str(tmp_path / "nothing"),
                "--checkpoint",
                str(tmp_path / "run_retrieval"),
                "x",
            ]
        )
        == 2
    )


def test_cli_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    assert main(["finetune", "retrieval"]) == 2
    assert "--config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n")
    assert main(["finetune", "retrieval", "--config", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
def test_sharded_retrieval_equals_single_process(tmp_path: Path) -> None:
    """torchrun, 2 ranks (gloo): each rank encodes and re-ranks half of the images; the summed
    score matrices equal the single-process ones."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from dist_retrieval import compute
    finally:
        sys.path.pop(0)
    single = compute()
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
            str(tmp_path / "out.pt"),
        ],
        check=True,
        timeout=300,
    )
    dist = torch.load(tmp_path / "out.pt", weights_only=True)
    # the same candidates; the ITM scores agree to float rounding (each rank's re-ranking
    # batches hold other pairs than the single process's, so the GEMMs sum in another order)
    for name in ("sims_i2t", "score_i2t", "score_t2i"):
        diff = (dist[name] - single[name]).abs().max().item()
        assert diff <= 1e-5, f"{name}: max |diff| {diff:.3g}"
    assert torch.equal(dist["score_i2t"] == -100.0, single["score_i2t"] == -100.0)
