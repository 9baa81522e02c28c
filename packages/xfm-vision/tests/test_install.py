"""The package imports and runs without transformers, tokenizers or mosaicml-streaming."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys

    class Block:
        BLOCKED = ("transformers", "tokenizers", "streaming")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    from xfm.core import registry
    import xfm.vision

    encoder = registry.create("vision_encoder", "beit_v2", image_size=16, patch_size=8,
                              width=16, layers=1, heads=2)
    assert encoder(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16)
    assert registry.create("vision_encoder", "vit", image_size=16, patch_size=8, width=16,
                           layers=1, heads=2)(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16)
    loaded = [m for m in sys.modules if m.split(".")[0] in Block.BLOCKED]
    assert not loaded, loaded
    print("ok")
    """
)


def test_imports_without_text_or_streaming_packages():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
