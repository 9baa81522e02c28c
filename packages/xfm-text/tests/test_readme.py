"""The README's Python examples run, in order, as one script (placeholders -> real files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_examples_run(tmp_path, monkeypatch, bpe_files, make_hf_mlm, capsys):
    pytest.importorskip("transformers")  # the README shows from_hf on a transformers object
    bert_folder = tmp_path / "bert"
    make_hf_mlm("bert").save_pretrained(bert_folder)
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    script = "\n".join(blocks)
    placeholders = {
        "path/to/roberta-base": bpe_files[0].parent,
        "path/to/bert-base-uncased": bert_folder,
        "path/to/out": tmp_path / "out",
    }
    for placeholder, real in placeholders.items():
        assert placeholder in script, placeholder
        script = script.replace(placeholder, str(real))
    assert "path/to/" not in script
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(script, str(README), "exec"), namespace)

    printed = capsys.readouterr().out
    # the errors the README shows, and the decoded text
    assert "token id 50265 at input_ids[0, 1] is outside the vocabulary" in printed
    assert "sequence length 513 exceeds the position table" in printed
    assert "a photo of a cat\n" in printed
    assert "ffn.fc1.weight" in printed and "[64, 32]" in printed
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert namespace["logits"].shape[1] == 15  # type: ignore[attr-defined]
