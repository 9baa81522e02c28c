"""``xfm search`` with a relative ``--images`` folder reads it from the working directory
(it was read from ``/``: ``image file not found: /data/synth/images/test/000000.png``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xfm.core.cli import main

MODEL = {
    "embed_dim": 16,
    "text": {"name": "roberta", "width": 32, "layers": 1, "heads": 2, "ffn_dim": 64},
    "vision": {"name": "beit_v2", "width": 32, "layers": 1, "heads": 2, "patch_size": 8},
    "fusion": {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64},
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        SynthConfig(seed=5, image_size=32, num_train=4, num_test=6, num_text=4, vocab_size=300),
        progress=False,
    )
    return out


def test_relative_images_folder(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from xfm.tasks.base import get_task
    from xfm.tasks.finetune import save_task_model
    from xfm.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(synth / "tokenizer")
    spec = {**MODEL, "text": {**MODEL["text"], "vocab_size": int(tokenizer.vocab_size)}}
    spec["vision"] = {**MODEL["vision"], "image_size": 32}
    torch.manual_seed(0)
    model = get_task("retrieval").build_model(spec)
    weights = tmp_path / "model.safetensors"
    save_task_model(model, weights, "retrieval", spec)

    monkeypatch.chdir(synth)  # "images/test" exists only relative to here
    argv = ["search", "--images", "images/test", "--checkpoint", str(weights)]
    argv += ["--tokenizer", "tokenizer", "--top", "6", "--rerank", "2", "a red circle"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    printed = sorted(line.split()[-1] for line in lines)
    assert printed == sorted(str(Path("images/test") / p.name) for p in synth.glob("images/test/*"))
