"""The README's Python examples run, in order, as one script (placeholder -> a real file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xfm.vision import BEiTv2

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = [
    pytest.mark.slow,  # builds base-size models
    pytest.mark.filterwarnings("ignore::UserWarning:timm.layers.interpolate"),
]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    # A stand-in for the official X-FM base checkpoint: random vision weights with the official
    # names (224px tables), plus a key of another tower that the importer must drop.
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BEiTv2().state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {f"vision_encoder.{k}": 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}
    for i in range(12):
        state[f"vision_encoder.blocks.{i}.attn.relative_position_bias_table"] = state.pop(
            f"vision_encoder.blocks.{i}.rel_pos.table"
        )
        state[f"vision_encoder.blocks.{i}.attn.relative_position_index"] = torch.zeros(
            197, 197, dtype=torch.long
        )
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(4, 4)
    checkpoint = tmp_path / "xfm_base.safetensors"
    save_file(state, checkpoint)

    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    script = "\n".join(blocks)
    assert "path/to/xfm_base.safetensors" in script
    script = script.replace("path/to/xfm_base.safetensors", str(checkpoint))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(script, str(README), "exec"), namespace)

    printed = capsys.readouterr().out
    readme = README.read_text(encoding="utf-8")
    for line in printed.splitlines():  # every printed line is shown in the README
        assert f"# {line}" in readme, line
    assert "got 4 channels" in printed and "got (2, 15)" in printed
    assert namespace["report"].ok  # type: ignore[attr-defined]
